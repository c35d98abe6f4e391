"""`recipe-checks init MODEL --gpu NAME [--gpus N]`: write a commented recipe whose traced step fits the GPU
(on N GPUs: each rank's step, with the sharding the search chose).

Exit 0: written (and it passes every check but the real steps); 1: no candidate fits, or the one that
fits has static errors (nothing is written); 2: bad input (model, GPU, flags, an existing file).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from recipe_checks import progress
from recipe_checks.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    init = sub.add_parser("init", help="write a commented recipe whose traced training step fits a GPU "
                          "(exit 0 written, 1 nothing fits, 2 bad input)")
    init.add_argument("model", help="a hub id or alias that resolves offline (`recipe-checks models` lists the bundled)")
    init.add_argument("--gpu", required=True, metavar="NAME", help="the target GPU (`recipe-checks gpus` lists them)")
    init.add_argument("--method", choices=("lora", "qlora", "full"), default="lora",
                      help="lora (default; QLoRA is tried when LoRA does not fit), qlora (4-bit NF4 and a paged "
                           "8-bit optimizer), full")
    init.add_argument("--seq", type=_positive, default=None, metavar="N",
                      help="sequence length (default: 2048, or the model's positions if fewer)")
    init.add_argument("--batch", type=_positive, default=None, metavar="N",
                      help="effective batch in sequences per optimizer step (default 16, rounded up to a multiple of "
                           "--gpus): micro-batch x accumulation x GPUs")
    init.add_argument("--gpus", type=_gpus, default=1, metavar="N",
                      help="the GPUs the run takes (default 1); with more, a sharding that fits is proposed: DDP, "
                           "FSDP2, or for a full fine-tune ZeRO-3 with the optimizer offloaded, traced per rank")
    init.add_argument("--output", "-o", metavar="FILE",
                      help="where to write the recipe; '-' for stdout (default: MODEL-METHOD-GPU.yaml here, "
                           "MODEL-METHOD-NxGPU.yaml with --gpus N)")
    init.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    init.add_argument("--max-traces", type=_positive, default=None, metavar="N",
                      help="at most N traced steps (default 12; a 7-8B model's trace takes a few seconds)")
    init.add_argument("--gpu-profiles", action="append", default=[], metavar="FILE",
                      help="extra GPU profiles (YAML, same format as the shipped profiles.yaml)")
    init.set_defaults(func=run, warns_versions=True)


def _positive(value: str) -> int:
    return _whole_number(value, 1_000_000)


def _gpus(value: str) -> int:
    from recipe_checks.init.search import MAX_GPUS

    return _whole_number(value, MAX_GPUS, " GPUs")


def _whole_number(value: str, most: int, unit: str = "") -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if not 1 <= number <= most:
        raise argparse.ArgumentTypeError(f"{number}: give 1 to {most}{unit}")
    return number


def default_output(model: str, method: str, gpu: str, gpus: int = 1) -> str:
    """e.g. llama-3.1-8b-qlora-rtx4090.yaml, llama-3.1-70b-lora-8xa100-80gb.yaml: the shipped recipes' naming."""
    name = re.sub(r"[^a-z0-9.]+", "-", model.rsplit("/", 1)[-1].lower()).strip("-")
    return f"{name}-{method}-{f'{gpus}x' if gpus > 1 else ''}{gpu}.yaml"


def run(args: argparse.Namespace) -> int:
    """Search candidates in order of throughput, trace them, write the first that fits."""
    from recipe_checks.gpus import GIB, GpuCatalog, GpuProfileError, UnknownGpuError
    from recipe_checks.init.search import DEFAULT_MAX_TRACES, InitError, build_spec, header_lines, propose, verify
    from recipe_checks.render import render_finding

    def bad_input(message: str) -> int:
        print(f"recipe-checks: {message}", file=sys.stderr)
        return EXIT_USAGE

    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
        gpu = catalog.get(args.gpu)
    except (GpuProfileError, UnknownGpuError) as exc:
        return bad_input(str(exc))
    output = args.output
    to_stdout = output == "-"
    try:
        spec, resolved, model = build_spec(args.model, gpu, args.method, args.seq, args.batch, args.gpus)
    except InitError as exc:
        return bad_input(str(exc))
    if output is None:
        output = default_output(spec.model, args.method, gpu.key, spec.gpus)
    if not to_stdout and Path(output).exists() and not args.force:
        return bad_input(f"{output} exists; pass --force to overwrite it, or --output another file")
    report = sys.stderr if to_stdout else sys.stdout
    on = gpu.describe() if spec.gpus == 1 else f"{spec.gpus} x {gpu.describe()}"
    print(f"recipe-checks init: {spec.model} on {on}, {args.method}, sequence length "
          f"{spec.seq_len}, effective batch {spec.batch}", file=report)
    try:
        with progress.bar("recipe-checks init: tracing candidates", unit="trace", enabled=progress.wanted()):
            proposal = propose(spec, resolved, model, gpu, catalog, args.max_traces or DEFAULT_MAX_TRACES)
    except InitError as exc:
        return bad_input(str(exc))
    for line in header_lines(proposal):
        print(f"  {line}", file=report)
    if proposal.chosen is None and all(t.peak_bytes is None for t in proposal.tried):
        print(f"recipe-checks init: the training step of {spec.model} cannot be traced ({proposal.tried[0].error}); "
              "no recipe written", file=report)
        return EXIT_FINDINGS
    if proposal.chosen is None:
        print(f"recipe-checks init: no candidate fits the {proposal.budget_bytes / GIB:.2f} GiB budget of {gpu.key}, "
              "not even the one with every memory saver at micro-batch 1; no recipe written. Try a shorter --seq, "
              f"{'--method qlora, ' if args.method == 'full' else ''}a smaller model"
              f"{' or' if spec.gpus == 1 else ','} a larger GPU (`recipe-checks gpus`)"
              f"{' or more --gpus' if spec.gpus > 1 else ''}.", file=report)
        return EXIT_FINDINGS
    shown = "<stdout>" if to_stdout else output
    results = verify(proposal, catalog, shown)
    errors = [f for r in results for f in r.errors]
    text = proposal.text
    if errors:
        source = text.splitlines()
        for finding in errors:
            line = finding.location.line
            print(render_finding(finding, source[line - 1] if 0 < line <= len(source) else "") + "\n", file=report)
        print(f"recipe-checks init: the candidate that fits has {len(errors)} error(s) in the checks above; "
              "no recipe written", file=report)
        return EXIT_FINDINGS
    for finding in (f for r in results for f in r.warnings):
        print(f"  warning {finding.rule_id}: {finding.message}", file=report)
    if to_stdout:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
    fits = proposal.estimate
    rank = f" (rank 0 of {spec.gpus})" if proposal.chosen.strategy is not None else ""
    print(f"recipe-checks init: wrote {shown}: {proposal.chosen.describe(spec)}; peak {fits.peak_bytes / GIB:.2f} "
          f"GiB{rank} of {fits.budget_bytes / GIB:.2f} GiB; {len(proposal.tried)} trace(s); checks pass "
          f"({', '.join(r.check for r in results if not r.skipped)})", file=report)
    return EXIT_OK
