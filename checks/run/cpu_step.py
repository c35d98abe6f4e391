"""cpu-step: the recipe's real step on the tiny-random model of its architecture, once per recipe.

The outcome is shared by the cpu-step rules (RC701-RC707) through the recipe's memo, so the step runs
once however many rules judge it. When the step goes wrong (a non-finite loss or update), the training
keys are reset one at a time to find the one it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recipe_checks.limits import shorten
from recipe_checks.models.diffusers import is_diffusers_config
from recipe_checks.run.setup import Scale, SetupRefused, blame_key, build_training, one_thread, training_kwargs
from recipe_checks.run.step import StepReport, run_real_step

if TYPE_CHECKING:
    from recipe_checks.fixtures.cache import FixtureCacheError

MEMO_KEY = "cpu-step"


@dataclass
class StepOutcome:
    report: StepReport | None = None
    refused: SetupRefused | None = None
    cannot_run: str | None = None  # why there is no step to judge (no fixture for the model, ...)
    # the fixture cache could not be used (not writable, the disk full): an error of this machine, never a skip
    fixture_error: str | None = None
    fixture: Any = None
    broken_by: str | None = None  # the training key whose default makes a non-finite step finite
    missing_extra: str | None = None  # the optional library the recipe's trainer needs (TRL for dpo), not installed
    preference: Any = None  # a DPO step's start: its rewards against the reference (recipe_checks.run.dpo.DpoStart)
    seconds: dict[str, float] = field(default_factory=dict)


def _broken(report: StepReport) -> bool:
    return not report.finite_loss or bool(report.non_finite_parameters or report.non_finite_gradients)


def cpu_step(state) -> StepOutcome:
    """The recipe's step on its tiny-random model, run once per recipe and shared by the rules; kept in the
    result cache (checks/result_cache.py) under what decides it."""
    if MEMO_KEY not in state.memo:
        from recipe_checks import result_cache

        def run() -> StepOutcome:
            with one_thread():
                return _run(state)

        parts = real_step_parts(state)
        state.memo[MEMO_KEY] = run() if parts is None else result_cache.cached(
            MEMO_KEY, parts, run, encode=outcome_to_dict, decode=outcome_from_dict,
            store=result_cache.store_for(state.options.cache_dir))
    return state.memo[MEMO_KEY]


def real_step_parts(state) -> dict | None:
    """What decides a recipe's real step on its tiny model besides the engine and the libraries: the recipe as
    validated (after format translation and its distributed files), the model's config, the CPU's kernel
    features. No GPU profile: the step runs on this CPU. None when there is no model to key it by."""
    from recipe_checks import result_cache

    resolved = state.resolved_model()
    if state.recipe is None or isinstance(resolved, Exception):
        return None
    try:
        recipe = state.recipe.model_dump(mode="json")
    except Exception:  # noqa: BLE001  a value with no JSON form: the step runs uncached
        return None
    return {"recipe": recipe, "model": {"name": resolved.name, "config": resolved.config},
            "trust_remote_code": state.options.trust_remote_code, "cpu": result_cache.cpu_features()}


def outcome_to_dict(outcome: StepOutcome) -> dict | None:
    """What the result cache stores of an outcome. None (not stored) for a step that could not run, whose
    message names the recipe's path, and for a refused one: the rules read the library's exception itself
    (its class, its attributes), which JSON does not hold, and a refusal may be this machine's doing."""
    from recipe_checks.result_cache import to_json

    if outcome.cannot_run is not None or outcome.refused is not None or outcome.fixture_error is not None:
        return None
    return {"report": to_json(outcome.report) if outcome.report is not None else None,
            "fixture": to_json(outcome.fixture), "broken_by": outcome.broken_by,
            "missing_extra": outcome.missing_extra,
            "preference": to_json(outcome.preference) if outcome.preference is not None else None,
            "seconds": to_json(outcome.seconds)}


def outcome_from_dict(data: dict) -> StepOutcome:
    """The outcome `outcome_to_dict` stored; NotAnEntry for anything else."""
    from recipe_checks.fixtures.cache import Fixture
    from recipe_checks.result_cache import from_json
    from recipe_checks.run.dpo import DpoStart

    stored = from_json(_StoredStep, data)
    return StepOutcome(
        report=from_json(StepReport, stored.report) if stored.report is not None else None,
        fixture=from_json(Fixture, stored.fixture) if stored.fixture is not None else None,
        broken_by=stored.broken_by, missing_extra=stored.missing_extra,
        preference=from_json(DpoStart, stored.preference) if stored.preference is not None else None,
        seconds=stored.seconds)


@dataclass
class _StoredStep:
    """outcome_to_dict's fields, with the types a stored entry must have (the nested ones checked by their class)."""

    report: dict | None
    fixture: dict | None
    broken_by: str | None
    missing_extra: str | None
    preference: dict | None
    seconds: dict[str, float]


@dataclass
class TinyModel:
    """The tiny-random stand-in of a recipe's model, as a real run loads it."""

    fixture: Any
    weights_dtype: str
    vocab_size: int

    @property
    def config(self) -> dict:
        """The tiny model's config.json."""
        import json

        return json.loads((self.fixture.path / "config.json").read_text(encoding="utf-8"))


def tiny_model(state) -> TinyModel | str | FixtureCacheError:
    """The recipe's tiny-random model (built into the huggingface_hub cache on first use; once per
    recipe); why there is none (a model recipe-checks cannot stand in for); or the error of a fixture
    cache it cannot use, which the real steps report as an error (fixture_failure)."""
    if "tiny-model" not in state.memo:
        from recipe_checks.fixtures.cache import FixtureCacheError, ensure_fixture
        from recipe_checks.memory.settings import settings_from_recipe

        recipe = state.recipe
        resolved = state.resolved_model()
        if is_diffusers_config(getattr(resolved, "config", None)):  # cpu-step runs FLUX's own step (flux_step.py)
            state.memo["tiny-model"] = ("the training run covers language models; a diffusers transformer's real "
                                        "step is checked by cpu-step")
            return state.memo["tiny-model"]
        task = recipe.lora.task_type if recipe.lora is not None else "CAUSAL_LM"
        try:
            fixture = ensure_fixture(resolved, cache_dir=state.options.fixture_cache, task_type=task or "CAUSAL_LM")
            state.memo["tiny-model"] = TinyModel(fixture, settings_from_recipe(recipe, resolved.config).weights_dtype,
                                                 _vocab_size(fixture.path))
        except FixtureCacheError as exc:  # this machine's cache, not the model: an error, not a skip
            state.memo["tiny-model"] = exc
        except Exception as exc:  # noqa: BLE001  no tiny model for this architecture: nothing to run
            state.memo["tiny-model"] = (f"no tiny-random model of '{shorten(recipe.model.name)}' could be built: "
                                        f"{shorten(str(exc), 200)}; build it with `recipe-checks fixtures build "
                                        f"{state.path}`")
    return state.memo["tiny-model"]


def fixture_failure(exc) -> str:
    """The message of a fixture cache that cannot be used, with its fix."""
    return f"the real step could not run: {shorten(str(exc), 300)}"


def _run(state) -> StepOutcome:
    import time

    recipe = state.recipe
    if is_diffusers_config(getattr(state.resolved_model(), "config", None)):  # FLUX: its own step
        from recipe_checks.run.flux_step import run_flux_cpu_step

        return run_flux_cpu_step(state)
    outcome = StepOutcome()
    started = time.perf_counter()
    tiny = tiny_model(state)
    if isinstance(tiny, str):
        outcome.cannot_run = tiny
        return outcome
    if isinstance(tiny, Exception):
        outcome.fixture_error = fixture_failure(tiny)
        return outcome
    outcome.fixture = tiny.fixture
    outcome.seconds["fixture"] = time.perf_counter() - started
    scale = Scale.small(recipe)
    if recipe.dpo is not None:  # TRL's DPOTrainer runs the step (recipe_checks.run.dpo)
        from recipe_checks.recipe.library import MissingExtra, require_trl

        try:
            require_trl()
        except MissingExtra as exc:
            outcome.missing_extra = str(exc)
            return outcome

    def step(kwargs: dict | None = None) -> StepReport:
        if recipe.dpo is not None:
            from recipe_checks.run.dpo import dpo_step

            report, outcome.preference = dpo_step(recipe, str(tiny.fixture.path), tiny.config, scale,
                                                  weights_dtype=tiny.weights_dtype, kwargs=kwargs)
            return report
        setup = build_training(recipe, str(tiny.fixture.path), scale, weights_dtype=tiny.weights_dtype, kwargs=kwargs)
        return run_real_step(setup, recipe, vocab_size=tiny.vocab_size)

    try:
        outcome.report = step()
    except SetupRefused as exc:
        outcome.refused = exc
        return outcome
    except Exception as exc:  # noqa: BLE001  whatever a library raises on this recipe is a finding
        outcome.refused = SetupRefused("the step", exc, ())
        return outcome
    finally:
        outcome.seconds["step"] = time.perf_counter() - started - outcome.seconds["fixture"]
    if _broken(outcome.report):
        outcome.broken_by = blame_key(training_kwargs(recipe, scale), lambda kw: _broken(step(kw)))
    return outcome


def _vocab_size(path) -> int:
    import json
    from pathlib import Path

    from recipe_checks.run.setup import vocab_size

    return vocab_size(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")))
