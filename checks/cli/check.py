"""`recipe-checks check PATH...` (alias `lint`): lint recipes with the same engine and options as the pytest
plugin, static checks by default (`--with-vram` adds the traced budget), in the format a reader wants.

Exit codes: 0 clean (warnings and information do not fail unless --recipes-strict), 1 findings or an
internal error, 2 a usage error or input that is no recipe at all (see `recipes_to_check`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from recipe_checks.cli.common import add_isolated, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, UsageError, lexists, options_from_args
from recipe_checks.options import add_cache_options, add_ci_options, add_options
from recipe_checks.report import FORMATS


def register(sub) -> None:
    check = sub.add_parser(
        "check", aliases=["lint"], help="check recipes (files or directories) and print the findings",
        description="Check recipes (files, or directories searched for *.yaml/*.yml files with a top-level "
                    "'model' key). Exit 0 clean, 1 findings, 2 usage error or no recipe to check.",
    )
    check.add_argument("paths", nargs="+", help="recipe files or directories to search")
    add_options(check.add_argument)
    add_ci_options(check.add_argument, cli=True)
    add_cache_options(check.add_argument, cli=True)
    add_isolated(check.add_argument)
    check.add_argument("--format", choices=tuple(FORMATS), default="text",
                       help="text for people; json for tools; github for workflow annotations; sarif for code "
                            "scanning (SARIF 2.1.0); junit for CI test views (one testcase per recipe x check)")
    check.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    check.add_argument("--with-vram", action="store_true",
                       help="also trace a training step on fake tensors and check the VRAM budget (seconds a recipe)")
    check.add_argument("--select", action="append", default=[], metavar="RULES",
                       help="report only these rules: ids, names or id prefixes, comma-separated (RC3: RC3xx; ALL)")
    check.add_argument("--ignore", action="append", default=[], metavar="RULES",
                       help="do not report these rules (ids, names or prefixes); the more specific of "
                            "--select and --ignore wins, as in ruff")
    verbosity = check.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also print information and skipped checks")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only the findings: no progress bar, no summary line, no list of recipes not checked")
    check.set_defaults(func=run, warns_versions=True)


def run(args: argparse.Namespace) -> int:
    from recipe_checks.baseline import BaselineError, check_baseline
    from recipe_checks.changed import ChangedSinceError
    from recipe_checks.cli import version
    from recipe_checks.gpus import GpuCatalog, GpuProfileError, UnknownGpuError
    from recipe_checks.report import RuleSelection, RunReport, SelectionError
    from recipe_checks.rules import TRACED_CHECKS, all_rules

    started = time.perf_counter()
    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
        options = options_from_args(args, catalog)
        selection = RuleSelection.parse(args.select, args.ignore, all_rules())
        not_recipes: list[tuple[str, str]] = []
        recipes = recipes_to_check(args.paths, not_recipes)
        recipes, unchanged, why_all = changed_only(recipes, args, options, catalog)
        if options.baseline:
            check_baseline(options.baseline, Path(args.paths[0]))
    except (GpuProfileError, UnknownGpuError, UsageError, SelectionError, ChangedSinceError, BaselineError) as exc:
        print(f"recipe-checks: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rules = selection.selected(all_rules())
    # the trace takes seconds a recipe: only when asked for (the regression gate compares traces), and
    # only when a rule it feeds is selected
    traced = (args.with_vram or bool(options.baseline)) and any(r.check in TRACED_CHECKS for r in rules)
    report = RunReport(rules=rules, target_gpus=options.gpus, strict=options.strict, verbose=args.verbose,
                       quiet=args.quiet, with_vram=traced, version=version(),
                       changed_since=args.recipes_changed_since, unchanged=unchanged, every_recipe_because=why_all,
                       not_recipes=not_recipes)
    for path in _progress(recipes, quiet=args.quiet):
        report.recipes.append(check_one(path, options, catalog, selection, traced=traced, verbose=args.verbose))
    report.seconds = time.perf_counter() - started
    for recipe, check, error in report.internal_errors():  # bugs of recipe-checks: on stderr, whatever the format
        where = f"internal error in check '{check.check}'" if check else "internal error"
        print(f"{recipe.path}: {where}: {error}", file=sys.stderr)
    rendered = FORMATS[args.format](report)
    verdict = EXIT_FINDINGS if report.failed else EXIT_OK
    try:
        _write(rendered, args.output)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and args.output is None:
            # the reader stopped reading (`| head`): nothing more to say, and nothing at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return verdict
        where = args.output if args.output is not None else "standard output"
        print(f"recipe-checks: cannot write the report to {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return verdict


def recipes_to_check(paths: list[str], not_recipes: list[tuple[str, str]] | None = None) -> list[Path]:
    """The recipes this run checks, in order, each once: the one place that decides it.

    A file named on the command line is a recipe whatever it holds (what is wrong with it is its
    finding, RC101 for a file that cannot be read); a directory is searched as pytest collects. A path
    that does not exist, or a directory with no recipe under it, is a usage error (exit 2). The YAML files a
    search leaves out for a reason worth saying (empty, not text: `discover.classify`) go to `not_recipes`.
    """
    from recipe_checks.discover import discover_recipes

    missing = [p for p in paths if not lexists(p)]
    if missing:
        raise UsageError(f"no such file or directory: {', '.join(missing)}")
    recipes: dict[Path, None] = {}
    empty: list[str] = []
    not_searched: list[str] = []
    left_out: list[tuple[Path, str]] = []
    for raw in paths:
        found = (list(discover_recipes([raw], not_searched=not_searched, not_recipes=left_out)) if os.path.isdir(raw)
                 else [Path(raw)])
        if not found:
            empty.append(raw)
        recipes.update(dict.fromkeys(found))
    for note in not_searched:  # the recipes found are checked all the same
        print(f"recipe-checks: warning: {note}", file=sys.stderr)
    if empty:
        seen = f" ({'; '.join(f'{p}: {why}' for p, why in left_out[:3])})" if left_out else ""
        raise UsageError(f"no recipe under {', '.join(empty)}{seen}: a recipe is a *.yaml or *.yml file with a "
                         "top-level 'model' key (hidden directories are not searched); name a file to check it anyway")
    if not_recipes is not None:
        not_recipes.extend((str(p), why) for p, why in dict.fromkeys(left_out))
    return list(recipes)


def changed_only(recipes: list[Path], args: argparse.Namespace, options, catalog) -> tuple[list[Path], list[str], str | None]:
    """With --changed-since REF: the recipes that differ from REF or read a file that does (a DeepSpeed or
    accelerate config, a model config or folder: recipe_checks.recipe.inputs), every one when a file that decides the
    checks changed; those left out; and why every recipe is checked (None: the changed ones only)."""
    if not args.recipes_changed_since:
        return recipes, [], None
    from recipe_checks.changed import changes_since
    from recipe_checks.context import RecipeState
    from recipe_checks.recipe.inputs import recipe_inputs

    changes = changes_since(args.recipes_changed_since, Path(args.paths[0]), args.gpu_profiles)

    def reads(path: Path) -> tuple[Path, ...]:
        state = RecipeState.from_file(path, str(path), options, catalog)  # read, not checked: no model is built
        return recipe_inputs(path, state.loaded)

    kept = [p for p in recipes if changes.selects(p) or changes.selects(p, reads(p))]
    return kept, [str(p) for p in recipes if p not in kept], changes.everything


def check_one(path: Path, options, catalog, selection, *, traced: bool, verbose: bool):
    """One recipe's RecipeReport: every check it is checked with, the selected findings of each."""
    from recipe_checks.engine import check_recipe
    from recipe_checks.findings import Severity
    from recipe_checks.report import CheckReport, RecipeReport

    try:
        state, results = check_recipe(path, options, catalog, traced=traced)
    except Exception as exc:  # a bug must not cost the other recipes their report
        return RecipeReport(str(path), error=f"{type(exc).__name__}: {exc}")
    from recipe_checks.recipe.inputs import recipe_inputs

    recipe = RecipeReport(state.path, inputs=[str(p) for p in recipe_inputs(state.fs_path, state.loaded)[1:]])
    if not results:  # off target: pytest deselects it, so this is no failure either
        recipe.other_gpus = state.declared_gpus()
        return recipe
    several = len({r.gpu for r in results if r.gpu is not None}) > 1  # the plugin's item names
    for result in results:
        name = f"{result.check}[{result.gpu}]" if several and result.gpu is not None else result.check
        skipped = result.skipped or _unselected(result.check, selection)
        check = CheckReport(result.check, name, result.gpu, skipped=skipped, waiting=list(result.waiting))
        recipe.checks.append(check)
        if result.error is not None:
            check.error = f"{type(result.error).__name__}: {result.error}"
            continue
        selected = [f for f in result.findings if selection.selects(f.rule_id)]
        check.failed = any(f.is_error or (options.strict and f.severity is Severity.WARNING) for f in selected)
        check.findings = [f for f in selected if f.severity is not Severity.INFO or verbose]
        for finding in check.findings:
            line = finding.location.line
            recipe.source_lines.setdefault(line, state.source_line(line))
    return recipe


def _unselected(check: str, selection) -> str | None:
    """Why a check whose rules --select/--ignore all leave out did not run (None: one of them is selected).
    The schema check reads the file for every other check and is never left out."""
    from recipe_checks.rules import rules_for

    rules = rules_for(check)
    if check == "schema" or not rules or any(selection.selects(r.id) for r in rules):
        return None
    return "not run: --select/--ignore leave out each of its rules"


def _progress(recipes: list[Path], *, quiet: bool):
    """A progress bar on stderr when a person watches it (a terminal) and did not ask for quiet."""
    from recipe_checks import progress

    if not progress.wanted(quiet=quiet):
        return recipes
    from tqdm import tqdm

    return tqdm(recipes, desc="recipe-checks", unit="recipe", file=sys.stderr, leave=False, dynamic_ncols=True)


def _write(text: str, output: str | None) -> None:
    if output is None:
        if text:
            print(text)
        return
    Path(output).write_text(text + "\n", encoding="utf-8")
