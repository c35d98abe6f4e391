"""Where a model keeps its decoder blocks: the one lookup the target-module rules and the memory engine share.

Both need the repeated blocks of the text decoder: the rules to say which blocks an adapter reaches,
the engine to trace a few blocks and replay them for the rest.
"""

from __future__ import annotations

from typing import Any


def text_config(config):
    """The decoder's config: the text part of a multimodal config, else the config itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_blocks(model: Any, *, strict: bool = True) -> tuple[str, Any] | None:
    """The name and ModuleList of the model's decoder blocks: the one list of num_hidden_layers
    modules of one class. Not `strict`: failing that, the longest ModuleList outside expert lists
    (a model whose config names no layer count). None when there is no such list."""
    import torch

    count = getattr(text_config(model.config), "num_hidden_layers", None) if hasattr(model, "config") else None
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    exact = [(name, m) for name, m in lists if count and len(m) == count and len({type(b) for b in m}) == 1]
    if len(exact) == 1:
        return exact[0]
    if strict:
        return None
    candidates = [(name, m) for name, m in lists if "expert" not in name and len(m)]
    return max(candidates, key=lambda nm: len(nm[1]), default=None)
