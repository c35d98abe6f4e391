"""The memory engine's error: a step it cannot trace becomes a finding of the vram check.

Kept apart from the engine's modules so that importing it (recipe_checks.compat does) needs no torch.
"""

from __future__ import annotations


class TraceError(RuntimeError):
    """The step cannot be traced for this recipe (an unsupported optimizer, model, setting or library)."""


class NotModelled(TraceError):
    """The step is one the libraries run, as far as recipe-checks knows, but the trace does not model it (bitsandbytes'
    quantized layers sharded by FSDP2): the vram check is not run, with this reason, never an error of the recipe."""
