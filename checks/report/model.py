"""The run report: what `recipe-checks check` found, filled once and rendered by each output format.

One RecipeReport per recipe, one CheckReport per recipe x check (a pytest item of the plugin), with the
findings the rule selection keeps. The formats read this and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from recipe_checks.findings import Finding, Severity


@dataclass
class CheckReport:
    """One recipe x check, as the plugin's item of the same name."""

    check: str
    name: str  # the plugin's item name: "vram", or "vram[t4]" when the recipe is checked against several GPUs
    gpu: str | None
    findings: list[Finding] = field(default_factory=list)  # selected; information only with --verbose
    failed: bool = False
    skipped: str | None = None
    waiting: list[str] = field(default_factory=list)
    error: str | None = None  # a bug of recipe-checks in this check, never a finding of the recipe

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return "error"
        if self.failed:
            return "failed"
        return "skipped" if self.skipped else "passed"


@dataclass
class RecipeReport:
    path: str  # as given (or found under a given directory)
    checks: list[CheckReport] = field(default_factory=list)
    other_gpus: list[str] | None = None  # off target: the GPUs it declares instead of --gpu
    error: str | None = None  # a bug of recipe-checks that stopped the whole recipe
    inputs: list[str] = field(default_factory=list)  # the files it reads besides itself (recipe_checks.recipe.inputs)
    # the source lines the findings quote, read while the recipe was checked (the recipe is not kept)
    source_lines: dict[int, str] = field(default_factory=dict, repr=False)

    def source_line(self, line: int) -> str:
        return self.source_lines.get(line, "")

    @property
    def checked(self) -> bool:
        return self.other_gpus is None


@dataclass
class RunReport:
    recipes: list[RecipeReport] = field(default_factory=list)
    rules: tuple[type, ...] = ()  # the selected rules (SARIF's tool.driver.rules)
    target_gpus: tuple[str, ...] = ()  # --gpu
    strict: bool = False
    verbose: bool = False
    quiet: bool = False
    with_vram: bool = False
    version: str = "unknown"
    seconds: float | None = None  # the run's wall time, measured by the command
    changed_since: str | None = None  # --changed-since REF
    unchanged: list[str] = field(default_factory=list)  # recipes left out: the same as at REF
    every_recipe_because: str | None = None  # a file that decides the checks changed since REF
    not_recipes: list[tuple[str, str]] = field(default_factory=list)  # YAML files a search left out, and why

    def findings(self) -> Iterator[tuple[RecipeReport, CheckReport, Finding]]:
        for recipe in self.recipes:
            for check in recipe.checks:
                for finding in check.findings:
                    yield recipe, check, finding

    @property
    def checked(self) -> list[RecipeReport]:
        return [r for r in self.recipes if r.checked]

    @property
    def not_checked(self) -> list[RecipeReport]:
        return [r for r in self.recipes if not r.checked]

    def internal_errors(self) -> Iterator[tuple[RecipeReport, CheckReport | None, str]]:
        for recipe in self.recipes:
            if recipe.error is not None:
                yield recipe, None, recipe.error
            for check in recipe.checks:
                if check.error is not None:
                    yield recipe, check, check.error

    @property
    def failed(self) -> bool:
        return any(r.error is not None or any(c.failed or c.error for c in r.checks) for r in self.recipes)

    def not_run(self) -> list[tuple[RecipeReport, CheckReport]]:
        """Every check of a checked recipe that did not run (no target GPU, a failing prerequisite, an unreadable
        recipe, none of its rules selected), each with its reason in `skipped`."""
        return [(r, c) for r in self.checked for c in r.checks if c.skipped and c.error is None]

    def partly_run(self) -> list[tuple[RecipeReport, CheckReport]]:
        """Every check of a checked recipe that ran but left rules waiting (the model could not be built, a section
        did not validate): not failed, and not wholly passed either; `waiting` says which rules and why."""
        return [(r, c) for r in self.checked for c in r.checks
                if c.waiting and not c.skipped and c.error is None and not c.failed]

    def not_run_groups(self) -> list[tuple[str, list[str], list[str]]]:
        """The checks that did not run, one group per reason (the recipe's own path left out of it, so that one
        reason of many recipes is one group): (the reason as the first recipe's report says it, the check names,
        the recipes), in the order first met."""
        groups: dict[str, tuple[str, list[str], list[str]]] = {}
        for recipe, check in self.not_run():
            reason = check.skipped or ""
            said, names, paths = groups.setdefault(reason.replace(recipe.path, "\0"), (reason, [], []))
            if check.name not in names:
                names.append(check.name)
            if recipe.path not in paths:
                paths.append(recipe.path)
        return list(groups.values())

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Severity}
        for _, _, finding in self.findings():
            counts[finding.severity.value] += 1
        return counts
