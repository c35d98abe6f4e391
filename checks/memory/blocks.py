"""Identical decoder blocks: find them, check that they are identical, keep four of them, and tell the
tracker which block's span of the step is running, so that block 1 can stand for the blocks left out.
"""

from __future__ import annotations

from recipe_checks.models.blocks import decoder_blocks as find_decoder_blocks
from recipe_checks.models.blocks import text_config

# A model with many identical decoder blocks is traced with four (two edges, two interior blocks
# compared with each other) and replayed with block 1's events repeated for the blocks left out.
TRACED_BLOCKS = 4
TEMPLATE_BLOCK = 1


class NotPeriodic(Exception):
    """Blocks that looked identical allocate differently: trace every block instead."""


def decoder_blocks(model):
    """The ModuleList of the model's decoder blocks (recipe_checks.models.blocks); None when there is no single one."""
    found = find_decoder_blocks(model)
    return found[1] if found is not None else None


def _fingerprint(block) -> tuple:
    """What decides a block's memory: its modules, their parameter and buffer shapes and dtypes,
    and their plain attributes (sliding window, attention type, ...) except the block's index."""
    parts = []
    for name, module in block.named_modules():
        attributes = tuple(sorted(
            (k, v) for k, v in vars(module).items()
            if not k.startswith("_") and k not in ("layer_idx", "layer_id", "layer_number")
            and isinstance(v, (bool, int, float, str, type(None)))
        ))
        tensors = tuple(
            (n, tuple(t.shape), t.dtype)
            for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        )
        parts.append((name, type(module).__qualname__, attributes, tensors))
    return tuple(parts)


def first_different_block(blocks, config) -> int | None:
    """The index of the first block that differs from block 0 (structure, attributes or the
    config's per-layer type), or None when all are identical."""
    layer_types = getattr(text_config(config), "layer_types", None)
    first = _fingerprint(blocks[0])
    for index, block in enumerate(blocks):
        if layer_types is not None and index < len(layer_types) and layer_types[index] != layer_types[0]:
            return index
        if index and _fingerprint(block) != first:
            return index
    return None


def keep_blocks(blocks, count: int) -> None:
    """Drop all but the first `count` blocks. The config keeps the full count: what the model builds
    per layer outside the blocks (a KV cache with a slot per layer, masks per layer type) is then the
    full model's, and the blocks' loop stops at the blocks there are."""
    del blocks[count:]


def blocks_of_tensors(blocks) -> dict[int, int]:
    """id(tensor) -> index of the decoder block holding it, for parameters, buffers and 4-bit states."""
    from recipe_checks.memory.quantize import quant_state_tensors

    out: dict[int, int] = {}
    for index, block in enumerate(blocks if blocks is not None else []):
        for t in [*block.parameters(), *block.buffers(), *quant_state_tensors(block)]:
            out[id(t)] = index
    return out


def segment_hooks(blocks, tracker, *, first: bool = False) -> list:
    """Tell the tracker which decoder block's span of the step is running. In the forward, block i's
    span runs from its start to the next block's (the frees between them, such as the previous
    block's output once block i has returned, recur between every pair of blocks; the last block's
    span ends with the model's forward); in the backward, from the gradient of its output (its
    backward starts) to the previous block's. `first`: run before the hooks the block has already (FSDP2's,
    which all-gather the block's parameters and prefetch the next block's), so that each block's span
    holds its own all-gather and prefetch, as every other block's does."""
    if blocks is None:
        return []

    def enter(index):
        def hook(*_):
            if tracker.phase == "forward":
                tracker.segment = index
        return hook

    def leave(index):
        def hook(_module, _args, output):
            if tracker.phase != "forward":
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if getattr(hidden, "requires_grad", False):
                hidden.register_hook(lambda grad: setattr(tracker, "segment", index))
        return hook

    hooks = []
    for index, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(enter(index), prepend=first))
        hooks.append(block.register_forward_hook(leave(index), prepend=first))
    return hooks
