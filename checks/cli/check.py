"""`recipe-checks check PATH...`: lint recipes with the same engine and options as the pytest plugin."""

from __future__ import annotations

import argparse
import json
import sys

from checks.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, UsageError, lexists, options_from_args
from checks.options import add_options


def register(sub) -> None:
    check = sub.add_parser("check", help="check recipes (files or directories) and print the findings")
    check.add_argument("paths", nargs="+", help="recipe files or directories to search")
    add_options(check.add_argument)
    check.add_argument("--format", choices=("text", "json", "github"), default="text",
                       help="text for people, json for tools, github for workflow annotations")
    check.add_argument("-v", "--verbose", action="store_true", help="also print information and skipped checks")
    check.set_defaults(func=run, warns_versions=True)


def run(args: argparse.Namespace) -> int:
    from checks.discover import discover_recipes
    from checks.engine import check_recipe
    from checks.findings import Severity
    from checks.gpus import GpuCatalog, GpuProfileError, UnknownGpuError
    from checks.render import github_annotation, render_finding

    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
        options = options_from_args(args, catalog)
    except (GpuProfileError, UnknownGpuError, UsageError) as exc:
        print(f"recipe-checks: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = [p for p in args.paths if not lexists(p)]
    if missing:
        print(f"recipe-checks: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    failed = False
    report: list[dict] = []
    not_checked: list[dict] = []
    internal: list[dict] = []  # bugs of recipe-checks, never a finding of the recipe
    recipes = list(discover_recipes(args.paths))
    for path in recipes:
        try:
            state, results = check_recipe(path, options, catalog)
        except Exception as exc:  # a bug must not cost the other recipes their report
            failed = True
            internal.append({"path": str(path), "check": None, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{path}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if not results:  # off target: pytest deselects it, so this is no failure either
            not_checked.append({"path": state.path, "gpus": state.declared_gpus()})
            if args.format == "text":
                print(f"{state.path}: not checked: declares {', '.join(state.declared_gpus())}, "
                      f"not {', '.join(options.gpus)} (use --recipes-all-gpus)\n")
            continue
        for result in results:
            if result.error is not None:
                failed = True
                internal.append({"path": state.path, "check": result.check,
                                 "error": f"{type(result.error).__name__}: {result.error}"})
                message = f"internal error in check '{result.check}': {type(result.error).__name__}: {result.error}"
                print(f"{state.path}: {message}", file=sys.stderr)
                continue
            failed = failed or result.failed(options.strict)
            shown = [f for f in result.findings if f.severity is not Severity.INFO or args.verbose]
            for finding in shown:
                if args.format == "json":
                    report.append({**finding.to_dict(), "gpu": result.gpu})
                elif args.format == "github":
                    print(github_annotation(finding))
                else:
                    print(render_finding(finding, state.source_line(finding.location.line)))
                    print()
            if args.format == "text" and args.verbose:
                if result.skipped:
                    print(f"{state.path}::{result.check}: skipped: {result.skipped}\n")
                for waiting in result.waiting:
                    print(f"{state.path}::{result.check}: not run: {waiting}\n")
    if args.format == "json":
        checked = [str(p) for p in recipes if str(p) not in {n["path"] for n in not_checked}]
        print(json.dumps({"recipes": checked, "not_checked": not_checked, "findings": report,
                          "internal_errors": internal, "failed": failed}, indent=2))
    elif args.format == "text":
        print(f"{len(recipes) - len(not_checked)} recipe(s) checked"
              f"{f', {len(not_checked)} for other GPUs not checked' if not_checked else ''}: "
              f"{'FAILED' if failed else 'ok'}")
    return EXIT_FINDINGS if failed else EXIT_OK
