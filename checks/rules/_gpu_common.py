"""Helpers shared by the GPU-run rules (not a rule: the registry skips modules without 'rc')."""

from __future__ import annotations

from recipe_checks.rules.base import NotRun

GPU_READS = frozenset({"model", "quantization", "lora", "training", "hardware"})


def device_or_skip():
    """The local CUDA device, or NotRun naming what is missing (the plugin's gpu marker skips first)."""
    from recipe_checks.run import gpu
    from recipe_checks.run.device import DeviceUnavailable

    try:
        return gpu.local_device()
    except DeviceUnavailable as exc:
        raise NotRun(f"not run: {exc}; run it on a machine with an NVIDIA GPU and a CUDA build of torch") from None


def memoized(ctx, key: str, compute):
    memo = ctx.state.memo
    full_key = f"{key}[{ctx.gpu.key}]"
    if full_key not in memo:
        memo[full_key] = compute()
    return memo[full_key]


def run_on_gpu(rule, ctx, key: str, compute):
    """(device, outcome, findings): the memoised outcome of `compute(device)` on the local GPU; NotRun when
    there is none or the outcome skipped; `findings` already says a failed run or an out-of-memory one."""
    from recipe_checks.limits import shorten

    device = device_or_skip()
    try:
        outcome = memoized(ctx, key, lambda: compute(device))
    except Exception as exc:  # noqa: BLE001  a failure of the real run is a finding, not a crash
        from recipe_checks.library_warnings import SilentlyIncorrect

        error = getattr(exc, "library_error", None)
        if isinstance(error, SilentlyIncorrect):  # the library's fault on this machine, not the recipe's
            return device, None, [rule.finding(
                ctx, error.finding_message(f"the {key} run on {device.name}"), ("training",), at_value=False, help=error.help)]
        return device, None, [rule.finding(
            ctx, f"the {key} run failed on {device.name}: {type(exc).__name__}: {shorten(str(exc), 300)}",
            ("training",), at_value=False, help="run the cpu checks first (they name refused settings)")]
    if outcome.skip:
        raise NotRun(f"not run: {outcome.skip}")
    if outcome.out_of_memory is not None:
        return device, outcome, [rule.finding(
            ctx, f"out of memory on {device.name} standing for {ctx.gpu.key}: "
                 + "; ".join(outcome.out_of_memory.lines()),
            ("training",), at_value=False, help="apply the fixes `recipe-checks estimate` ranks for this recipe")]
    return device, outcome, []
