"""cpu-train: a short training run of the recipe on its tiny-random model, through the Trainer, on the CPU.

Sizes are scaled down further than cpu-step's (one row of 32 tokens a step, no accumulation): the run is
30 optimizer steps, and what it shows is the loss on that memorised row.
"""

from __future__ import annotations

from dataclasses import dataclass

from recipe_checks.run.cpu_step import fixture_failure, real_step_parts, tiny_model
from recipe_checks.run.setup import Scale, SetupRefused, build_training, one_thread
from recipe_checks.run.train import DEFAULT_STEPS, TrainReport, run_training

MEMO_KEY = "cpu-train"


@dataclass
class TrainOutcome:
    report: TrainReport | None = None
    refused: SetupRefused | None = None
    cannot_run: str | None = None
    fixture_error: str | None = None  # the fixture cache could not be used: an error, never a skip (as cpu-step's)


def cpu_train(state, steps: int | None = None) -> TrainOutcome:
    """The recipe's short run on its tiny-random model, once per recipe; kept in the result cache
    (checks/result_cache.py) under what decides it, the number of steps included."""
    if MEMO_KEY not in state.memo:
        from recipe_checks import result_cache

        steps = steps or state.options.train_steps or DEFAULT_STEPS

        def run() -> TrainOutcome:
            with one_thread():
                return _run(state, steps)

        parts = real_step_parts(state)
        state.memo[MEMO_KEY] = run() if parts is None else result_cache.cached(
            MEMO_KEY, {**parts, "steps": steps}, run, encode=outcome_to_dict, decode=outcome_from_dict,
            store=result_cache.store_for(state.options.cache_dir))
    return state.memo[MEMO_KEY]


def outcome_to_dict(outcome: TrainOutcome) -> dict | None:
    """What the result cache stores of a run: its report, whose tokens/s are those of the run that filled the
    entry; None (not stored) for a run that could not run or was refused, as cpu-step's."""
    from recipe_checks.result_cache import to_json

    if outcome.cannot_run is not None or outcome.refused is not None or outcome.fixture_error is not None:
        return None
    return {"report": to_json(outcome.report)}


def outcome_from_dict(data: dict) -> TrainOutcome:
    """The outcome `outcome_to_dict` stored; NotAnEntry for anything else."""
    from recipe_checks.result_cache import NotAnEntry, from_json

    if not isinstance(data, dict) or set(data) != {"report"}:
        raise NotAnEntry("not a stored training run")
    return TrainOutcome(report=from_json(TrainReport, data["report"]))


def _run(state, steps: int) -> TrainOutcome:
    recipe = state.recipe
    tiny = tiny_model(state)
    if isinstance(tiny, str):
        return TrainOutcome(cannot_run=tiny)
    if isinstance(tiny, Exception):
        return TrainOutcome(fixture_error=fixture_failure(tiny))
    scale = Scale.small(recipe, micro_batch=1, max_accumulation=1)
    if recipe.dpo is not None:  # TRL's DPOTrainer.train (recipe_checks.run.dpo); cpu-step says when TRL is missing
        from recipe_checks.recipe.library import MissingExtra, require_trl

        try:
            require_trl()
        except MissingExtra as exc:
            return TrainOutcome(cannot_run=str(exc))
        try:
            from recipe_checks.run.dpo import dpo_training

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
