"""RC105: every GPU the recipe names is a known GPU profile."""

from __future__ import annotations

from checks.gpus import UnknownGpuError
from checks.rules.base import Rule


class UnknownGpu(Rule):
    """
    ## What it checks
    Each name in `hardware.gpu` is a known GPU profile. Names are forgiving ("RTX 4090",
    "rtx-4090" and "rtx4090" are the same); `recipe-checks gpus` lists them, and
    `--gpu-profiles FILE` adds your own.

    ## Why it matters
    Precision, optimizer and memory checks run against the target GPU's profile; an unknown name
    means none of them can say whether the recipe runs there.

    ## Example
        hardware:
          gpu: rtx4099

    ## Use instead
        hardware:
          gpu: rtx4090
    """

    id = "RC105"
    name = "unknown-gpu"
    check = "schema"
    why = "the GPU-dependent checks need the target GPU's profile"

    def run(self, ctx):
        if ctx.state.loaded is None:
            return
        for i, name in enumerate(ctx.state.declared_gpus()):
            profile = ctx.state.gpu_profile(name)
            if isinstance(profile, UnknownGpuError):
                hint = f"did you mean '{profile.suggestions[0]}'? " if profile.suggestions else ""
                yield self.finding(
                    ctx,
                    f"'{name}' is not a known GPU",
                    ("hardware", "gpu", i) if ("hardware", "gpu", i) in ctx.loaded.value_spans else ("hardware", "gpu"),
                    help=f"{hint}Known: {', '.join(profile.known)}. Add a profile with --gpu-profiles FILE.",
                )
