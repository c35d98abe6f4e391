"""The `recipe-checks` command: lint recipes, explain rules, list GPUs and bundled models, print the schema.

`check` runs the same engine as the pytest plugin (checks.engine), with the same options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from checks.options import Options, add_options, split_names

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Flags that do not go together: exit 2 with the message."""


def _lexists(path: str) -> bool:
    """Whether a path names anything, a dangling or looping link included (it gets its finding)."""
    try:
        return os.path.lexists(path)
    except (ValueError, OSError):  # a NUL byte: reported as a finding of that path, not a crash
        return True


def _options(args: argparse.Namespace, catalog) -> Options:
    """The run options from the flags `add_options` declared: one reading for check and estimate."""
    gpus = split_names(args.gpu)
    for name in gpus:
        catalog.get(name)  # UnknownGpuError: a usage error, reported by the caller
    if args.recipes_all_gpus and not gpus:
        raise UsageError("--recipes-all-gpus needs --gpu NAME: the GPU to check every recipe against")
    return Options(
        gpus=gpus,
        all_gpus=args.recipes_all_gpus,
        allow_network=args.recipes_allow_network,
        trust_remote_code=args.recipes_trust_remote_code,
        strict=args.recipes_strict,
        gpu_profiles=tuple(args.gpu_profiles),
        train_steps=args.recipes_train_steps,
    )


def _cmd_check(args: argparse.Namespace) -> int:
    from checks.discover import discover_recipes
    from checks.engine import check_recipe
    from checks.findings import Severity
    from checks.gpus import GpuCatalog, GpuProfileError, UnknownGpuError
    from checks.render import github_annotation, render_finding

    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
        options = _options(args, catalog)
    except (GpuProfileError, UnknownGpuError, UsageError) as exc:
        print(f"recipe-checks: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = [p for p in args.paths if not _lexists(p)]
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


def _cmd_estimate(args: argparse.Namespace) -> int:
    """Trace one training step of the recipe's full-size model and print the memory it needs."""
    from checks.context import RecipeState
    from checks.engine import run_check
    from checks.gpus import GIB, GpuCatalog, GpuProfileError, UnknownGpuError
    from checks.memory.estimate import TraceError, estimate
    from checks.render import render_finding
    from checks.rules import CHECKS, GPU_CHECKS, RUN_CHECKS, TRACED_CHECKS
    from checks.throughput import recipe_ceiling

    def bad_input(message: str) -> int:
        if args.json:
            print(json.dumps({"error": message}))
        else:
            print(f"recipe-checks: {message}", file=sys.stderr)
        return EXIT_USAGE

    path = Path(args.recipe)
    if not path.is_file():
        return bad_input(f"no such recipe file: {path}")
    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
        options = _options(args, catalog)
    except (GpuProfileError, UnknownGpuError, UsageError) as exc:
        return bad_input(str(exc))
    if len(options.gpus) > 1:
        return bad_input(f"estimate traces one GPU at a time; got --gpu {', '.join(options.gpus)}")
    state = RecipeState.from_file(path, str(path), options, catalog)
    schema = run_check(state, "schema")
    if schema.errors or state.recipe is None:
        for finding in schema.errors:
            print(render_finding(finding, state.source_line(finding.location.line)), file=sys.stderr)
        return bad_input(f"{path} has schema errors; `recipe-checks check {path}` lists them")
    recipe = state.recipe
    names = list(options.gpus) or recipe.hardware.gpu
    if not names:
        return bad_input("the recipe names no GPU: pass --gpu NAME")
    try:
        gpu = catalog.get(names[0])
    except UnknownGpuError as exc:
        return bad_input(str(exc))
    static_errors = [
        f for check in CHECKS if check not in TRACED_CHECKS | RUN_CHECKS and check != "schema"
        for f in run_check(state, check, gpu.key if check in GPU_CHECKS else None).errors
    ]
    try:
        result = estimate(recipe, state.resolved_model(), gpu, with_fixes=not args.no_fixes)
    except TraceError as exc:
        if static_errors:  # the recipe as written does not start: its findings say why, not the library's error
            for finding in static_errors:
                print(render_finding(finding, state.source_line(finding.location.line)) + "\n", file=sys.stderr)
            return bad_input(f"the training step cannot be traced until the {len(static_errors)} error(s) above "
                             f"are fixed ({exc})")
        return bad_input(f"the training step cannot be traced: {exc}")
    model = state.meta_model()
    speed = recipe_ceiling(recipe, model, gpu)
    hours = speed.hours_per_epoch(args.dataset_tokens) if args.dataset_tokens else None
    if args.json:
        out = result.to_dict()
        out.update({
            "gpu": gpu.key,
            "method": recipe.method.value,
            "flops_per_token": speed.flops_per_token,
            "ceiling_tokens_per_second": speed.tokens_per_second,
            "hours_per_epoch_at_ceiling": hours,
            "static_errors": [f.to_dict() for f in static_errors],
        })
        print(json.dumps(out, indent=2))
    else:
        verdict = "fits" if result.fits else ("fits only if paged optimizer state spills to host memory"
                                              if result.fits_with_paging else "does NOT fit")
        print(f"{path} on {gpu.key} ({recipe.method.label}): peak {result.peak_bytes / GIB:.2f} GiB, "
              f"budget {result.budget_bytes / GIB:.2f} GiB ({result.budget_source}): {verdict}")
        print(f"breakdown at the peak ({result.peak_phase}):")
        for category, nbytes in sorted(result.breakdown.items(), key=lambda kv: -kv[1]):
            print(f"  {category:<24}{nbytes / GIB:>9.3f} GiB")
        if result.paged_bytes:
            print(f"  (of which paged optimizer state, can spill to host memory: {result.paged_bytes / GIB:.3f} GiB)")
        for fix in result.fixes:
            print(f"fix: {fix.name}: peak {fix.peak_bytes / GIB:.2f} GiB, saves {fix.saved_bytes / GIB:.2f} GiB"
                  f"{' (fits)' if fix.fits else ''}  --  {fix.change}")
        if speed.tokens_per_second:
            line = (f"throughput ceiling: {speed.tokens_per_second:,.0f} tokens/s ({speed.flops_per_token / 1e9:.1f} GFLOP/token"
                    f" at {speed.peak_tflops:g} dense TFLOP/s)")
            if hours is not None:
                line += f"; at least {hours:.2f} h per epoch of {args.dataset_tokens:,} tokens"
            print(line)
        for note in result.notes:
            print(f"note: {note}")
        if static_errors:
            print(f"note: the recipe has {len(static_errors)} static error(s) that do not change this estimate "
                  f"(e.g. {static_errors[0].rule_id}); `recipe-checks check {path}` lists them")
    return EXIT_OK if result.fits else EXIT_FINDINGS


def _cmd_explain(args: argparse.Namespace) -> int:
    from checks.rules import all_rules, rule_by_id

    if not args.rule:
        for rule in all_rules():
            print(f"{rule.id}  {rule.name:<28} {rule.check:<15} {rule.severity.value:<8} {rule.why}")
        return EXIT_OK
    rule = rule_by_id(args.rule)
    if rule is None:
        from checks.suggest import did_you_mean

        known = [r.id for r in all_rules()] + [r.name for r in all_rules()]
        print(f"recipe-checks: no rule '{args.rule}'. {did_you_mean(args.rule, known)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"# {rule.id} {rule.name} (check: {rule.check}, {rule.severity.value})\n")
    print(rule.doc())
    return EXIT_OK


def _cmd_gpus(args: argparse.Namespace) -> int:
    from checks.gpus import GIB, GpuCatalog

    catalog = GpuCatalog.load(tuple(args.gpu_profiles))
    print(f"{'name':<16}{'GPU':<34}{'GiB':>6}{'CC':>6}{'bf16':>6}{'fp8':>5}{'bf16 TFLOP/s':>14}{'GB/s':>7}")
    for p in catalog:
        tflops = f"{p.dense_bf16_tflops:g}" if p.dense_bf16_tflops else "-"
        bandwidth = f"{p.memory_bandwidth_gbs:g}" if p.memory_bandwidth_gbs else "-"
        print(f"{p.key:<16}{p.name[:33]:<34}{p.memory_bytes / GIB:>6.1f}{p.compute_capability:>6}"
              f"{'yes' if p.bf16 else 'no':>6}{'yes' if p.fp8 else 'no':>5}{tflops:>14}{bandwidth:>7}")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from checks.models.resolve import bundled_index

    seen = set()
    for entry in bundled_index().values():
        if entry.hub_id in seen:
            continue
        seen.add(entry.hub_id)
        aliases = f"  (also: {', '.join(entry.aliases)})" if entry.aliases else ""
        print(f"{entry.hub_id}{aliases}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from checks.recipe.jsonschema import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_fixtures(args: argparse.Namespace) -> int:
    """Build (or find) tiny-random fixtures in the huggingface_hub cache, or list those it holds."""
    from checks.fixtures.cache import cached_fixtures, default_cache_dir

    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.action == "list":
        repos, warnings = cached_fixtures(cache)
        for repo in repos:
            for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
                refs = f" ({', '.join(sorted(revision.refs))})" if revision.refs else ""
                print(f"{repo.repo_id}  {revision.commit_hash}{refs}  {_size(revision.size_on_disk)}")
        for warning in warnings:
            print(f"recipe-checks: warning: {warning}", file=sys.stderr)
        print(f"{len(repos)} fixture(s) in {cache}")
        return EXIT_OK

    from checks.compat import version_warnings
    from checks.fixtures.cache import bundled_models, ensure_fixture, recipe_models
    from checks.fixtures.tiny import FixtureError
    from checks.models.resolve import ModelResolutionError, resolve_model_config

    if not args.names and not args.all:
        print("recipe-checks: fixtures build needs recipes or model ids, or --all for every bundled model",
              file=sys.stderr)
        return EXIT_USAGE
    for warning in version_warnings():
        print(f"recipe-checks: warning: {warning}", file=sys.stderr)
    try:
        # Everything is resolved before anything is built: a typo fails fast, with nothing half done.
        models = [(model, "CAUSAL_LM") for model in bundled_models()] if args.all else []
        for name in args.names:
            if _lexists(name):  # a recipe file, or a directory of recipes (a model directory is a model)
                if Path(name).is_dir() and (Path(name) / "config.json").is_file():
                    models.append((resolve_model_config(name), "CAUSAL_LM"))
                else:
                    models.extend(recipe_models([name]))
            else:
                models.append((resolve_model_config(name), "CAUSAL_LM"))
        seen: set[str] = set()
        for model, task_type in models:
            fixture = ensure_fixture(model, cache_dir=cache, task_type=task_type)
            if fixture.repo_id in seen:
                continue
            seen.add(fixture.repo_id)
            print(f"{fixture.repo_id}  {fixture.revision}  {'built' if fixture.built else 'cached'}  "
                  f"{_size(fixture.size_bytes)}  {model.name}")
    except (ModelResolutionError, FixtureError) as exc:
        print(f"recipe-checks: {exc}\nhelp: {exc.help}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{len(seen)} fixture(s) in {cache}")
    return EXIT_OK


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipe-checks", description="Check fine-tuning recipes against a target GPU before any GPU hour is spent."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="check recipes (files or directories) and print the findings")
    check.add_argument("paths", nargs="+", help="recipe files or directories to search")
    add_options(check.add_argument)
    check.add_argument("--format", choices=("text", "json", "github"), default="text",
                       help="text for people, json for tools, github for workflow annotations")
    check.add_argument("-v", "--verbose", action="store_true", help="also print information and skipped checks")
    check.set_defaults(func=_cmd_check)

    est = sub.add_parser("estimate", help="trace one training step of the full-size model: peak memory, "
                         "breakdown, fixes, throughput ceiling (exit 0 fits, 1 does not, 2 bad input)")
    est.add_argument("recipe", help="a recipe file")
    add_options(est.add_argument)  # the same flags as `check` (one --gpu: default, the recipe's first)
    est.add_argument("--json", action="store_true", help="print one JSON object")
    est.add_argument("--dataset-tokens", type=int, default=0, help="tokens per epoch, for hours per epoch")
    est.add_argument("--no-fixes", action="store_true", help="do not trace the fixes when it does not fit")
    est.set_defaults(func=_cmd_estimate)

    explain = sub.add_parser("explain", help="print a rule's documentation (no argument: list the rules)")
    explain.add_argument("rule", nargs="?", help="a rule id (RC301) or name (qlora-paged-optimizer)")
    explain.set_defaults(func=_cmd_explain)

    gpus = sub.add_parser("gpus", help="list the known GPU profiles")
    gpus.add_argument("--gpu-profiles", action="append", default=[], metavar="FILE")
    gpus.set_defaults(func=_cmd_gpus)

    models = sub.add_parser("models", help="list the model configs bundled with recipe-checks")
    models.set_defaults(func=_cmd_models)

    schema = sub.add_parser("schema", help="print the JSON Schema of the recipe format")
    schema.add_argument("--output", "-o", help="write it to this file")
    schema.set_defaults(func=_cmd_schema)

    fixtures = sub.add_parser("fixtures", help="tiny-random models of the recipes' architectures in the "
                              "huggingface_hub cache: build them, or list those cached")
    fixtures_sub = fixtures.add_subparsers(dest="action", required=True)
    build = fixtures_sub.add_parser("build", help="build (or find) the tiny fixtures of recipes or models")
    build.add_argument("names", nargs="*", metavar="RECIPE_OR_MODEL",
                       help="recipe files, directories of recipes, hub ids or model directories")
    build.add_argument("--all", action="store_true", help="every model bundled with recipe-checks")
    listing = fixtures_sub.add_parser("list", help="list the tiny fixtures in the cache")
    for action in (build, listing):
        action.add_argument("--cache-dir", metavar="DIR",
                            help="huggingface_hub cache directory (default: HF_HUB_CACHE, else HF_HOME/hub)")
    fixtures.set_defaults(func=_cmd_fixtures)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("check", "estimate"):
        from checks.compat import drop_cpu_kernel_notice, version_warnings

        drop_cpu_kernel_notice()

        for warning in version_warnings():
            print(f"recipe-checks: warning: {warning}", file=sys.stderr)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
