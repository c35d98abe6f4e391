"""Helpers shared by the GPU-run rules (not a rule: the registry skips modules without 'rc')."""

from __future__ import annotations

from checks.rules.base import NotRun

GPU_READS = frozenset({"model", "quantization", "lora", "training", "hardware"})


def device_or_skip():
    """The local CUDA device, or NotRun naming what is missing (the plugin's gpu marker skips first)."""
    from checks.run import gpu
    from checks.run.device import DeviceUnavailable

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


def oom_lines(outcome) -> str:
    return "; ".join(outcome.out_of_memory.lines())
