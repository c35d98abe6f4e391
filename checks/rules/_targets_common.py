"""Helpers shared by the target-module rules (not a rule: the registry skips modules without 'rc')."""

from __future__ import annotations

from recipe_checks.targets import TargetAnalysis, analysis_for


def analysis(ctx) -> TargetAnalysis | None:
    result = analysis_for(ctx)
    return result if isinstance(result, TargetAnalysis) else None


def target_key(ctx, target: str) -> tuple:
    """The key path of one target entry, for pointing at its exact place in the list."""
    written = ctx.loaded.data.get("lora", {}).get("target_modules")
    if isinstance(written, list) and target in written:
        return ("lora", "target_modules", written.index(target))
    return ("lora", "target_modules")


def names_line(names: list[str]) -> str:
    return ", ".join(names)
