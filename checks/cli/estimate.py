"""`recipe-checks estimate RECIPE`: the traced peak of one training step, its breakdown, fixes, throughput."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recipe_checks import progress, result_cache
from recipe_checks.cli.common import add_isolated, EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, UsageError, options_from_args
from recipe_checks.options import add_cache_options, add_options


def register(sub) -> None:
    est = sub.add_parser("estimate", help="trace one training step of the full-size model: peak memory, "
                         "breakdown, fixes, throughput ceiling (exit 0 fits, 1 does not, 2 bad input)")
    est.add_argument("recipe", help="a recipe file")
    add_options(est.add_argument)  # the same flags as `check` (one --gpu: default, the recipe's first)
    add_cache_options(est.add_argument, cli=True)
    add_isolated(est.add_argument)
    est.add_argument("--json", action="store_true", help="print one JSON object")
    est.add_argument("--dataset-tokens", type=int, default=0, help="tokens per epoch, for hours per epoch")
    est.add_argument("--no-fixes", action="store_true", help="do not trace the fixes when it does not fit")
    est.add_argument("--plot", metavar="FILE.png", help="also draw the breakdown, the budgets of the GPU and its "
                     "neighbours, and the fixes, as a PNG (needs the `plot` extra: matplotlib)")
    est.set_defaults(func=run, warns_versions=True)


# what every rank of a distributed step holds whole, whatever the strategy shards
_REPLICATED = frozenset({"weights", "quant_state", "adapters", "gradients", "optimizer_state", "optimizer_state_paged"})


def run(args: argparse.Namespace) -> int:
    """Trace one training step of the recipe's full-size model and print the memory it needs."""
    from recipe_checks.context import RecipeState
    from recipe_checks.engine import run_check
    from recipe_checks.gpus import GIB, GpuCatalog, GpuProfileError, UnknownGpuError
    from recipe_checks.memory.estimate import TraceError, estimate
    from recipe_checks.render import render_finding
    from recipe_checks.rules import CHECKS, GPU_CHECKS, RUN_CHECKS, TRACED_CHECKS, stopping_rule_ids
    from recipe_checks.throughput import recipe_ceiling

    def bad_input(message: str) -> int:
        if args.json:
            print(json.dumps({"error": message}))
        else:
            print(f"recipe-checks: {message}", file=sys.stderr)
        return EXIT_USAGE

    path = Path(args.recipe)
    if not path.is_file():
        return bad_input(f"no such recipe file: {path}")
    if args.plot:  # before the trace: a missing extra or folder is said in a second, not after it
        from recipe_checks.plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            return bad_input(str(exc))
        if not Path(args.plot).resolve().parent.is_dir():
            return bad_input(f"--plot {args.plot}: no such folder {Path(args.plot).parent}")
    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
        options = options_from_args(args, catalog)
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
    from recipe_checks.formats import untraced_step

    untraced = untraced_step(state, "vram")  # a trainer whose step the recipe model has not (TRL GRPO, KTO, ...)
    if untraced is not None:
        return bad_input(untraced)
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
        with progress.bar("recipe-checks estimate: tracing", unit="trace", enabled=progress.wanted()), \
                result_cache.using(options.cache_dir):
            result = estimate(recipe, state.resolved_model(), gpu, with_fixes=not args.no_fixes)
    except TraceError as exc:
        # The real cause first. A policy finding (a non-paged optimizer, fp16 on a GPU without it) changes nothing
        # the trace builds, so it is never blamed; an error that says the step cannot be built as written
        # (Rule.stops_the_step: a target that matches no module, a quantization setting) may be why, shown after.
        stopping = stopping_rule_ids()
        maybe_why = [f for f in static_errors if f.rule_id in stopping]
        cause = f"the training step cannot be traced: {exc}"
        if args.json or not maybe_why:
            return bad_input(cause + (f" (the recipe's {', '.join(f.rule_id for f in maybe_why)} may be why)"
                                      if maybe_why else ""))
        print(f"recipe-checks: {cause}", file=sys.stderr)
        print(f"the recipe's {len(maybe_why)} error(s) below stop the step as written and may be why:\n",
              file=sys.stderr)
        for finding in maybe_why:
            print(render_finding(finding, state.source_line(finding.location.line)) + "\n", file=sys.stderr)
        return EXIT_USAGE
    model = state.meta_model()
    speed = recipe_ceiling(recipe, model, gpu)
    hours = speed.hours_per_epoch(args.dataset_tokens) if args.dataset_tokens else None
    if args.json:
        out = result.to_dict()
        out.update({
            "recipe": str(path),  # with gpu: what a regression baseline file is keyed by (checks/baseline.py)
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
        where = gpu.key if result.plan is None else f"{result.world_size} x {gpu.key}, {result.plan.label}"
        per = "" if result.plan is None else " per rank"
        print(f"{path} on {where} ({recipe.method_label}): peak {result.peak_bytes / GIB:.2f} GiB{per}, "
              f"budget {result.budget_bytes / GIB:.2f} GiB ({result.budget_source}): {verdict}")
        print(f"breakdown at the peak ({result.peak_phase})" + (", rank 0" if result.plan is not None else "") + ":")
        sharded = result.plan.sharded if result.plan is not None else frozenset()
        for category, nbytes in sorted(result.breakdown.items(), key=lambda kv: -kv[1]):
            kind = (f"  (1/{result.world_size} of the whole: sharded)" if category in sharded else
                    "  (all-gathered: whole blocks while they compute)" if category == "unsharded_weights" else
                    "  (the whole, on every rank)" if result.plan is not None and category in _REPLICATED else "")
            print(f"  {category:<24}{nbytes / GIB:>9.3f} GiB{kind}")
        if result.plan is not None and result.trace.timeline.host_bytes:
            print(f"  host memory, offloaded:  {result.trace.timeline.host_bytes / GIB:>7.3f} GiB per rank ("
                  + ", ".join(f"{k} {v / GIB:.2f}" for k, v in sorted(result.trace.timeline.host_breakdown.items()))
                  + ")")
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
    if args.plot:
        from recipe_checks.plot import plot_estimate

        try:
            plot_estimate(args.plot, result, recipe=recipe, recipe_name=path.name, gpu=gpu, catalog=catalog)
        except OSError as exc:
            return bad_input(f"--plot {args.plot}: cannot write it: {exc}")
        print(f"plot: {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK if result.fits else EXIT_FINDINGS
