"""Run checks over recipes: the one entry point the pytest plugin and the command line share.

A check is a named group of rules (one pytest item per recipe x check). Results are cached on the
RecipeState so that items of the same recipe, and the unused-ignore rule, never run a rule twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from checks.context import RecipeContext, RecipeState
from checks.findings import Finding, Severity
from checks.gpus import GpuCatalog, GpuProfile
from checks.options import Options
from checks.rules import CHECKS, GPU_CHECKS, TRACED_CHECKS, rules_for


@dataclass
class CheckResult:
    check: str
    gpu: str | None
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)
    skipped: str | None = None  # why the check did not run
    error: BaseException | None = None  # a bug in a rule: reported as a crash of that item only

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def infos(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.INFO]

    def failed(self, strict: bool = False) -> bool:
        return bool(self.errors or (strict and self.warnings))


def ignores_for(state: RecipeState) -> dict[str, str]:
    ignores = dict(state.options.ignore)
    if state.recipe is not None:
        ignores.update({k.strip().upper(): v for k, v in state.recipe.checks.ignore.items()})
    return ignores


def _skip_reason(state: RecipeState, check: str, gpu: str | None) -> str | None:
    if check == "schema":
        return None
    if not state.schema_ok:
        return f"not checked: {state.path} has schema errors; fix those first (see {state.path}::schema)"
    if check in GPU_CHECKS:
        if gpu is None:
            return (
                f"not checked: {state.path} names no target GPU; set hardware.gpu in the recipe "
                "or pass --gpu=NAME"
            )
        if not isinstance(state.gpu_profile(gpu), GpuProfile):
            return f"not checked: '{gpu}' is not a known GPU (see {state.path}::schema)"
    if check in TRACED_CHECKS:
        # tracing a step of a recipe that will not start answers nothing: the static findings come first
        failing = [c for c in CHECKS if c not in TRACED_CHECKS and c != "schema" and run_check(state, c, gpu).errors]
        if failing:
            names = ", ".join(f"{state.path}::{c}" for c in failing)
            return f"not traced: the recipe has errors to fix first ({names})"
    rules = rules_for(check)
    if rules and all("model" in r.needs for r in rules) and isinstance(state.meta_model(), Exception):
        return f"not checked: the model of {state.path} could not be built (see {state.path}::schema)"
    return None


def run_check(state: RecipeState, check: str, gpu: str | None = None) -> CheckResult:
    key = (check, gpu if check in GPU_CHECKS else None)
    if key in state.results:
        return state.results[key]
    result = CheckResult(check=check, gpu=key[1])
    result.skipped = _skip_reason(state, check, key[1])
    if result.skipped is None:
        ctx = RecipeContext(state, key[1])
        model_broken = None
        ignores = ignores_for(state)
        try:
            for rule_cls in rules_for(check):
                if "model" in rule_cls.needs:
                    if model_broken is None:
                        model_broken = isinstance(state.meta_model(), Exception)
                    if model_broken:
                        continue
                for finding in rule_cls().run(ctx):
                    (result.suppressed if finding.rule_id in ignores else result.findings).append(finding)
        except Exception as exc:  # a bug in a rule fails this item alone, with its traceback
            result.error = exc
    if check == "schema" and result.error is None:
        from checks.rules.rc109_unused_ignore import unused_ignore_findings

        result.findings.extend(unused_ignore_findings(state, run_check))
    result.findings.sort(key=lambda f: (f.location.line, f.location.column, f.rule_id))
    state.results[key] = result
    return result


def gpus_for(state: RecipeState, options: Options) -> list[str | None]:
    """The target GPUs a recipe is checked against in this run (None: no GPU at all)."""
    declared = state.declared_gpus()
    if not options.gpus:
        return list(declared) or [None]
    if options.all_gpus or not declared:
        return list(options.gpus)
    declared_keys = {_profile_key(state.catalog, g) for g in declared}
    return [g for g in options.gpus if _profile_key(state.catalog, g) in declared_keys]


def _profile_key(catalog: GpuCatalog, name: str) -> str:
    try:
        return catalog.get(name).key
    except LookupError:
        return name.strip().lower()


def check_recipe(path: Path, options: Options, catalog: GpuCatalog, display_path: str | None = None,
                 *, traced: bool = True) -> tuple[RecipeState, list[CheckResult]]:
    """Every check of one recipe against every GPU it is checked against in this run
    (`traced=False`: the static checks only, without tracing a training step)."""
    state = RecipeState.from_file(path, display_path or str(path), options, catalog)
    results: list[CheckResult] = []
    gpus = gpus_for(state, options)
    for check in CHECKS:
        if not traced and check in TRACED_CHECKS:
            continue
        for gpu in gpus if check in GPU_CHECKS else [None]:
            results.append(run_check(state, check, gpu))
    return state, results
