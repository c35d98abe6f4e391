"""cpu-train: a short training run of the recipe on its tiny-random model, through the Trainer, on the CPU.

Sizes are scaled down further than cpu-step's (one row of 32 tokens a step, no accumulation): the run is
30 optimizer steps, and what it shows is the loss on that memorised row.
"""

from __future__ import annotations

from dataclasses import dataclass

from checks.run.cpu_step import tiny_model
from checks.run.setup import Scale, SetupRefused, build_training, one_thread
from checks.run.train import DEFAULT_STEPS, TrainReport, run_training

MEMO_KEY = "cpu-train"


@dataclass
class TrainOutcome:
    report: TrainReport | None = None
    refused: SetupRefused | None = None
    cannot_run: str | None = None


def cpu_train(state, steps: int | None = None) -> TrainOutcome:
    """The recipe's short run on its tiny-random model, once per recipe."""
    if MEMO_KEY not in state.memo:
        with one_thread():
            state.memo[MEMO_KEY] = _run(state, steps or state.options.train_steps or DEFAULT_STEPS)
    return state.memo[MEMO_KEY]


def _run(state, steps: int) -> TrainOutcome:
    recipe = state.recipe
    tiny = tiny_model(state)
    if isinstance(tiny, str):
        return TrainOutcome(cannot_run=tiny)
    scale = Scale.small(recipe, micro_batch=1, max_accumulation=1)
    if recipe.dpo is not None:  # TRL's DPOTrainer.train (checks.run.dpo); cpu-step says when TRL is missing
        from checks.recipe.library import MissingExtra, require_trl

        try:
            require_trl()
        except MissingExtra as exc:
            return TrainOutcome(cannot_run=str(exc))
        try:
            from checks.run.dpo import dpo_training

            return TrainOutcome(report=dpo_training(recipe, str(tiny.fixture.path), tiny.config, scale,
                                                    weights_dtype=tiny.weights_dtype, steps=steps))
        except SetupRefused as exc:
            return TrainOutcome(refused=exc)
        except Exception as exc:  # noqa: BLE001  whatever a library raises on this recipe is a finding
            return TrainOutcome(refused=SetupRefused("the training run", exc, ()))
    try:
        setup = build_training(recipe, str(tiny.fixture.path), scale, weights_dtype=tiny.weights_dtype,
                               schedule_steps=steps)
        return TrainOutcome(report=run_training(setup, recipe, vocab_size=tiny.vocab_size, steps=steps))
    except SetupRefused as exc:
        return TrainOutcome(refused=exc)
    except Exception as exc:  # noqa: BLE001  whatever a library raises on this recipe is a finding
        return TrainOutcome(refused=SetupRefused("the training run", exc, ()))
