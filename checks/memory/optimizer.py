"""The optimizer of the traced step: the one transformers' Trainer builds for `training.optim`, with
CUDA's defaults, and its state wrapped so that the tracker knows whose parameter is being updated.
"""

from __future__ import annotations

import collections

from recipe_checks.memory.errors import TraceError

# Paged bitsandbytes optimizers put states of tensors with at least this many elements in CUDA
# managed memory (bitsandbytes/optim/optimizer.py: get_state_buffer).
PAGED_MIN_NUMEL = 100_000


def build_optimizer(settings, params: list):
    """The optimizer transformers' Trainer builds for this name, forced to CUDA's defaults."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir="/nonexistent-recipe-checks", optim=settings.optim, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, report_to=[], use_cpu=True,
    )
    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    except Exception as exc:  # optimizers whose package is not installed (galore, apollo, ...)
        raise TraceError(f"optimizer '{settings.optim}' cannot be built here: {exc}") from None
    if cls.__module__.startswith("torch.optim") and "fused" not in kwargs:
        kwargs = {**kwargs, "foreach": True}  # torch's default on CUDA: multi-tensor, with its temporaries
    return cls(params, **kwargs)


class SpanByParameter(collections.defaultdict):
    """An optimizer's state that tells the tracker whose parameter is being updated: optimizers that
    update one parameter at a time read `state[p]` first, and the span runs to the next read."""

    def __init__(self, state, tracker, block_of: dict[int, int]):
        super().__init__(dict, state)
        self._tracker, self._block_of = tracker, block_of

    def __getitem__(self, param):
        if self._tracker.phase == "optimizer":
            self._tracker.segment = self._block_of.get(id(param))
        return super().__getitem__(param)
