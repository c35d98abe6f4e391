"""RC105: every GPU the recipe names is a known GPU profile."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.gpus import GIB, GpuFamily, UnknownGpuError
from recipe_checks.rules.base import Rule
from recipe_checks.suggest import normalize_name


class UnknownGpu(Rule):
    """
    ## What it checks
    Each name in `hardware.gpu` is a known GPU profile. Names are forgiving ("RTX 4090",
    "rtx-4090" and "rtx4090" are the same); a name that starts exactly one profile up to a separator
    means it (`rtx3060` is `rtx3060-12gb`, said as information); one that starts several (`a100`: 40 and
    80 GB) is a warning that lists them: the precision and optimizer checks run on what those profiles
    share, and the memory checks ask for the exact card. A misspelt name suggests only a card of the same
    family (docs/gpus.md). `recipe-checks gpus` lists the profiles, and `--gpu-profiles FILE` adds your own.

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
            key = ("hardware", "gpu", i) if ("hardware", "gpu", i) in ctx.loaded.value_spans else ("hardware", "gpu")
            if isinstance(profile, UnknownGpuError):
                hint = f"did you mean '{profile.suggestions[0]}'? " if profile.suggestions else ""
                yield self.finding(
                    ctx,
                    f"'{name}' is not a known GPU",
                    key,
                    help=f"{hint}Known: {', '.join(profile.known)}. Add a profile with --gpu-profiles FILE.",
                )
            elif isinstance(profile, GpuFamily):
                shared = ("the precision and optimizer checks run on what they share "
                          f"({profile.shared_traits()})" if profile.agrees else
                          "they differ in compute capability or bf16/fp8, so no GPU check can run")
                yield self.finding(
                    ctx,
                    f"'{name}' matches {len(profile.profiles)} GPU profiles: {profile.listing()}",
                    key,
                    severity=Severity.WARNING,
                    why="the memory checks need the exact card's memory; " + shared,
                    help=f"name the card: {' or '.join(profile.keys)}",
                )
            elif normalize_name(name) not in {normalize_name(n) for n in (profile.key, *profile.aliases)}:
                yield self.finding(
                    ctx,
                    f"'{name}' is taken as {profile.key} ({profile.name}, {profile.memory_bytes / GIB:.1f} GiB), "
                    "the one profile it starts",
                    key,
                    severity=Severity.INFO,
                    help=f"if yours is another variant, add its profile with --gpu-profiles FILE; write {profile.key} "
                         "to say this one",
                )
