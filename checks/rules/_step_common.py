"""Helpers shared by the cpu-step rules (not a rule: the registry skips modules without 'rc')."""

from __future__ import annotations

from recipe_checks.rules.base import NotRun

# What every cpu-step rule reads: the step is built from all of it.
STEP_READS = frozenset({"model", "quantization", "lora", "training", "dpo"})


def step_report(ctx):
    """The recipe's real step (run once per recipe), or None when the step could not be built or its fixture
    cache could not be used (RC701 reports both); NotRun when this machine has nothing to run it on."""
    from recipe_checks.run.cpu_step import cpu_step

    outcome = cpu_step(ctx.state)
    if outcome.fixture_error:
        return None
    if outcome.missing_extra:  # e.g. a dpo recipe without TRL
        raise NotRun(f"not run: {outcome.missing_extra}")
    if outcome.cannot_run:
        raise NotRun(f"not run: {outcome.cannot_run}")
    return outcome.report


def modules_line(names: list[str]) -> str:
    from recipe_checks.run.step import summarize_modules

    return summarize_modules(names)
