"""The memory engine's error: a step it cannot trace becomes a finding of the vram check.

Kept apart from the engine's modules so that importing it (recipe_checks.compat does) needs no torch.
"""

from __future__ import annotations


class TraceError(RuntimeError):
    """The step cannot be traced for this recipe (an unsupported optimizer, model, setting or library)."""
