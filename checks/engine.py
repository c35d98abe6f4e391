"""Run checks over recipes: the one entry point the pytest plugin and the command line share.

A check is a named group of rules (one pytest item per recipe x check). Results are cached on the
RecipeState so that items of the same recipe, and the unused-ignore rule, never run a rule twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recipe_checks import check_cache, result_cache
from recipe_checks.context import RecipeContext, RecipeState
from recipe_checks.compat import CompatError
from recipe_checks.findings import Finding, Location, Severity
from recipe_checks.formats import untraced_step
from recipe_checks.gpus import GpuCatalog, GpuFamily, NeedsExactCard, UnknownGpuError
from recipe_checks.options import Options
from recipe_checks.rules import (CHECKS, CUDA_CHECKS, GPU_CHECKS, IGNORES_CHECK, PREREQUISITES, RUN_CHECKS, TRACED_CHECKS,
                                  rules_for, stopping_rule_ids)
from recipe_checks.rules.base import CannotJudge, NotRun, Rule


@dataclass
class CheckResult:
    check: str
    gpu: str | None
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)
    skipped: str | None = None  # why the check did not run
    waiting: list[str] = field(default_factory=list)  # rules of the check that did not run, and why
    judged: set[str] = field(default_factory=set)  # ids of the rules that reached a verdict
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
    """Why a whole check cannot run against this GPU (None: it runs; its rules are gated one by one)."""
    if check == "schema":
        return None
    if state.loaded is None:
        error = state.load_error
        if error is not None and error.rule_id == "RC112" and not error.is_error:  # another kind of file, no recipe
            return f"not checked: {state.path} is not a recipe: {error.message}"
        return f"not checked: {state.path} could not be read as a recipe (see {state.path}::schema)"
    if check in GPU_CHECKS:
        if gpu is None:
            return (
                f"not checked: {state.path} names no target GPU; set hardware.gpu in the recipe "
                "or pass --gpu=NAME"
            )
        if isinstance(state.gpu_profile(gpu), UnknownGpuError):
            return f"not checked: '{gpu}' is not a known GPU (see {state.path}::schema)"
    untraced = untraced_step(state, check)  # a trainer without a step in the recipe model (TRL GRPO, KTO, ...)
    if untraced is not None:
        return untraced
    first = PREREQUISITES.get(check)
    if first is not None and run_check(state, first, gpu).failed():
        return f"not run: {state.path}::{first} fails, and {check} would fail for the same reason"
    return None


def _exact_card_finding(state: RecipeState, check: str, gpu: str, family: GpuFamily, attribute: str) -> Finding:
    """A GPU check against an ambiguous name ('a100') read what its profiles do not share: ask for the card."""
    declared = state.declared_gpus()
    at = ("hardware", "gpu", declared.index(gpu)) if gpu in declared else ()
    if at and at not in state.loaded.value_spans:
        at = ("hardware", "gpu")
    return Finding(
        "RC105", f"the {check} check needs the exact card: '{gpu}' matches {family.listing()}",
        state.loaded.location(at), check=check, key="hardware.gpu" if at else "",
        why=f"the {check} check reads the card's {attribute}, which those profiles do not share",
        help=f"name one of them in {'hardware.gpu' if at else '--gpu'}: {' or '.join(family.keys)}",
    )


def _rule_blocked(state: RecipeState, rule: type[Rule]) -> str | None:
    """Why a rule cannot run on this recipe: a section it reads is broken, or the model it needs is."""
    needs_model = "model" in rule.needs
    if not rule.reads and not needs_model:
        return None  # reads the raw file (or the load error) only
    if state.validation is None:
        return "the file could not be read"
    why = state.validation.blocked(rule.reads | ({"model"} if needs_model else frozenset()))
    if why is None and needs_model and isinstance(state.meta_model(), Exception):
        why = "the model could not be built"
    return why


def _static_errors(state: RecipeState, gpu: str | None, besides: str) -> list[str]:
    """The static checks (not traced) whose errors say the step cannot be built or started as written
    (`Rule.stops_the_step`): the explanation a failed trace or real step points at. A policy error (RC301's
    non-paged optimizer) changes nothing the step builds and is never pointed at."""
    stopping = stopping_rule_ids()
    return [
        f"{state.path}::{c}" for c in CHECKS
        if c != besides and c not in TRACED_CHECKS | RUN_CHECKS
        and any(f.rule_id in stopping for f in run_check(state, c, gpu).errors)
    ]


def run_check(state: RecipeState, check: str, gpu: str | None = None) -> CheckResult:
    key = (check, gpu if check in GPU_CHECKS else None)
    if key in state.results:
        return state.results[key]
    stored = check_cache.load(state, check, key[1]) if check not in CUDA_CHECKS else None
    if stored is not None:  # an unchanged recipe: neither the libraries nor a rule are needed
        state.results[key] = stored
        return stored
    result = CheckResult(check=check, gpu=key[1])
    state.results[key] = result  # a check that asks for the others' results never recurses into itself
    result.skipped = _skip_reason(state, check, key[1])
    if result.skipped is None:
        ctx = RecipeContext(state, key[1])
        ignores = ignores_for(state)
        rules = rules_for(check)
        waiting: dict[str, list[str]] = {}
        with result_cache.using(state.options.cache_dir):  # the cache the traces the rules ask for use
            try:
                for rule_cls in rules:
                    why = _rule_blocked(state, rule_cls)
                    if why is not None:
                        if state.loaded is not None:  # a file that does not load: RC101 says all there is to say
                            waiting.setdefault(why, []).append(rule_cls.id)
                        continue
                    try:
                        if check in CUDA_CHECKS and isinstance(ctx.gpu, GpuFamily):
                            raise NeedsExactCard(ctx.gpu, "memory")  # a local GPU stands in for the target's memory
                        found = list(rule_cls().run(ctx))
                    except NeedsExactCard as exc:  # an ambiguous target ('a100'): what its profiles do not share
                        finding = _exact_card_finding(state, check, key[1], exc.family, exc.attribute)
                        if not any(f.rule_id == finding.rule_id for f in result.findings + result.suppressed):
                            result.judged.add(finding.rule_id)
                            (result.suppressed if finding.rule_id in ignores else result.findings).append(finding)
                        continue
                    except CompatError as exc:  # an installed library lacks what the rule asks of it
                        found = [Finding(rule_cls.id, str(exc), ctx.loaded.location(()) if ctx.state.loaded else
                                         Location(state.path), check=check, why="the rule asks the library itself",
                                         help="install a library version in the supported range (the report header "
                                              "lists the installed ones; the README, the range)")]
                    except NotRun as exc:  # nothing to judge here: the check skips, saying what it needs
                        result.skipped = result.skipped or str(exc)
                        continue
                    except CannotJudge as exc:
                        explained = _static_errors(state, key[1], check)
                        if explained:
                            result.skipped = (f"not judged: {exc.finding.message}; fix the errors reported in "
                                              f"{', '.join(explained)} first")
                            continue
                        found = [exc.finding]
                    result.judged.add(rule_cls.id)
                    for finding in found:  # an ignore silences failures; information is never hidden
                        ignored = finding.rule_id in ignores and finding.severity is not Severity.INFO
                        (result.suppressed if ignored else result.findings).append(finding)
            except Exception as exc:  # a bug in a rule fails this item alone, with its traceback
                result.error = exc
        result.waiting = [f"{', '.join(ids)} wait: {why} (see {state.path}::schema)" for why, ids in waiting.items()]
        if rules and sum(len(ids) for ids in waiting.values()) == len(rules) and result.skipped is None:
            result.skipped = "not checked: " + "; ".join(
                f"{why} (see {state.path}::schema)" for why in waiting
            )
    result.findings.sort(key=lambda f: (f.location.line, f.location.column, f.rule_id))
    if check not in CUDA_CHECKS:
        check_cache.save(state, check, key[1], result)
    return result


def unused_ignores(state: RecipeState) -> CheckResult:
    """The engine's post-pass: the recipe's ignores judged over every check that ran in this process.

    Never runs a check itself: an ignore of a rule whose check did not run (deselected, skipped, or
    run in another process) is not judged.
    """
    from recipe_checks.rules.rc109_unused_ignore import UnusedIgnore, unused_ignore_findings

    judged = {rule_id for r in state.results.values() if r.error is None for rule_id in r.judged}
    used = {f.rule_id for r in state.results.values() for f in r.suppressed}
    decided_by = {"judged": sorted(judged), "used": sorted(used)}
    stored = check_cache.load(state, IGNORES_CHECK, None, decided_by)
    if stored is not None:
        return stored
    result = CheckResult(check=IGNORES_CHECK, gpu=None)
    if _rule_blocked(state, UnusedIgnore) is None:
        try:
            result.findings.extend(unused_ignore_findings(RecipeContext(state), judged, used))
        except Exception as exc:
            result.error = exc
    check_cache.save(state, IGNORES_CHECK, None, result, decided_by)
    return result


def has_ignores(state: RecipeState) -> bool:
    """Whether the recipe file lists ignores: read from the raw file, so collection stays cheap."""
    checks = state.loaded.data.get("checks") if state.loaded is not None else None
    return isinstance(checks, dict) and bool(checks.get("ignore"))


def gpus_for(state: RecipeState, options: Options) -> list[str | None]:
    """The target GPUs a recipe is checked against in this run (None: no GPU at all; empty: off target).

    With --gpu, a recipe declaring other known GPUs is off target. One declaring a name that is no
    known GPU (a typo such as 'rtx4099') is never off target: it is checked, RC105 names the typo,
    and its GPU checks skip saying so, rather than the recipe vanishing from the run.
    """
    declared = state.declared_gpus()
    if not options.gpus:
        return list(declared) or [None]
    if options.all_gpus or not declared:
        return list(options.gpus)
    keys = {g: _profile_keys(state.catalog, g) for g in declared}
    wanted = frozenset().union(*keys.values())
    chosen = [g for g in options.gpus if _profile_keys(state.catalog, g) & wanted]
    return chosen or [g for g, found in keys.items() if not found]


def _profile_keys(catalog: GpuCatalog, name: str) -> frozenset[str]:
    """The profiles a name stands for: one, several for an ambiguous name ('a100'), none if unknown."""
    return frozenset(p.key for p in catalog.matches(name))


def check_recipe(path: Path, options: Options, catalog: GpuCatalog, display_path: str | None = None,
                 *, traced: bool = True, run: bool = False) -> tuple[RecipeState, list[CheckResult]]:
    """Every check of one recipe against every GPU it is checked against in this run, then the
    unused-ignore post-pass (`traced=False`: the static checks only, without tracing a step; `run`:
    the real steps and training runs too, cpu-step, cpu-train and, where CUDA is, gpu-step and gpu-train).
    An off-target recipe (it declares other GPUs than --gpu) gets no results, as pytest deselects it."""
    state = RecipeState.from_file(path, display_path or str(path), options, catalog)
    results: list[CheckResult] = []
    gpus = gpus_for(state, options)
    if not gpus:
        return state, results
    for check in CHECKS:
        if (not traced and check in TRACED_CHECKS) or (not run and check in RUN_CHECKS):
            continue
        for gpu in gpus if check in GPU_CHECKS else [None]:
            results.append(run_check(state, check, gpu))
    if has_ignores(state):
        results.append(unused_ignores(state))
    return state, results
