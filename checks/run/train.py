"""A short training run of a recipe through transformers' Trainer: cpu-train on the tiny-random model,
gpu-train on the full-size one. The same code path for both; only the model, the sizes and the device differ.

The data is one fixed batch of random tokens, repeated: memorisable, so a run that trains must lower its
loss on it. The run records every step's loss, the adapters' and the base's change, and tokens/s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from recipe_checks.library_warnings import quiet
from recipe_checks.run.setup import Scale, TrainingSetup, training_arguments, training_kwargs, trusted
from recipe_checks.run.step import module_of

DEFAULT_STEPS = 30
# The loss on the memorised batch must end at least this fraction below where it started: 0.1%. At the
# shipped recipes' learning rates a tiny model moves 0.2-2% in 30 steps; a run that trains nothing moves it
# by rounding only (deterministic evaluation of the same batch: exactly 0 when the weights did not change).
MIN_LOSS_DROP = 0.001


@dataclass
class TrainReport:
    steps: int
    losses: list[float] = field(default_factory=list)  # the Trainer's logged loss, every step
    first_loss: float = math.nan  # on the fixed batch, before training (eval mode)
    last_loss: float = math.nan  # ... and after it
    tokens_per_second: float = 0.0
    seconds: float = 0.0
    adapters_changed: bool = False
    base_changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in [*self.losses, self.first_loss, self.last_loss])

    @property
    def drop(self) -> float:
        """How far the loss fell, as a fraction of where it started."""
        return (self.first_loss - self.last_loss) / self.first_loss if self.first_loss else 0.0


class FixedBatch:
    """A map-style dataset: `rows` fixed rows of random tokens, the same on every run (seeded)."""

    def __init__(self, rows: int, seq_len: int, vocab_size: int, seed: int = 0) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, vocab_size, (rows, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "labels": self.input_ids[i]}


def short_run_kwargs(recipe, scale: Scale, steps: int) -> tuple[dict[str, Any], list[str]]:
    """The recipe's TrainingArguments kwargs for a run of `steps` optimizer steps: its warmup kept as the
    same fraction of the run (an absolute warmup longer than the run would train at lr ~0 throughout)."""
    from recipe_checks.run.setup import DEFAULT_SCHEDULE_STEPS

    kwargs = training_kwargs(recipe, scale)
    notes = []
    warmup = kwargs.get("warmup_steps", 0)
    if warmup and warmup >= 1:
        total = recipe.training.max_steps if recipe.training.max_steps > 0 else DEFAULT_SCHEDULE_STEPS
        fraction = min(warmup / total, 0.5)
        kwargs["warmup_steps"] = fraction
        notes.append(f"warmup {warmup} of {total} steps kept as the fraction {fraction:.3g} of the {steps}-step run")
    kwargs.pop("num_train_epochs", None)
    kwargs.update(max_steps=steps, logging_steps=1, logging_strategy="steps",
                  eval_strategy="no", disable_tqdm=True, dataloader_drop_last=False)
    return kwargs, notes


def _loss_on(model, batch, precision: str) -> float:
    import torch

    from recipe_checks.run.setup import autocast

    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(precision, batch.device.type):
        loss = model(input_ids=batch, labels=batch).loss
    model.train(was_training)
    return float(loss.float().item())


@trusted("the training run")
def run_training(setup: TrainingSetup, recipe, *, vocab_size: int, steps: int = DEFAULT_STEPS,
                 device: str = "cpu", seed: int = 0) -> TrainReport:
    """`steps` optimizer steps through Trainer.train on the fixed batch; what the run shows."""
    import torch
    from transformers import Trainer

    scale = setup.scale
    kwargs, notes = short_run_kwargs(recipe, scale, steps)
    args = training_arguments(kwargs, output_dir=setup.args.output_dir, on_cpu=device == "cpu")
    rows = scale.micro_batch * scale.gradient_accumulation
    data = FixedBatch(rows, scale.seq_len, vocab_size, seed)
    model = setup.model
    probe = data.input_ids[: scale.micro_batch].to(device)
    report = TrainReport(steps=steps, notes=[*setup.notes, *notes])
    scale_note = scale.describe(recipe)
    if scale_note:
        report.notes.append(scale_note)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    report.first_loss = _loss_on(model, probe, setup.precision)
    with quiet():
        trainer = Trainer(model=model, args=args, train_dataset=data)
        started = time.perf_counter()
        trainer.train()
        report.seconds = time.perf_counter() - started
    report.losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    report.last_loss = _loss_on(model, probe, setup.precision)
    report.tokens_per_second = steps * rows * scale.seq_len / report.seconds if report.seconds else 0.0
    params = dict(model.named_parameters())
    report.adapters_changed = any(not torch.equal(params[n].detach(), before) for n, before in trainable.items())
    report.base_changed = sorted({module_of(n) for n, before in frozen.items() if not torch.equal(params[n].detach(), before)})
    return report
