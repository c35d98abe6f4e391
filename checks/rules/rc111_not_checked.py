"""RC111: the settings of another tool's config that change memory or correctness and are not checked, and a
recipe's number of GPUs left to the launcher."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.formats import translation_of
from recipe_checks.recipe import LAUNCHER
from recipe_checks.rules.base import Rule


class NotChecked(Rule):
    """
    ## What it checks
    A config of another tool, read as a recipe, sets nothing the recipe model cannot express yet that
    changes a step's memory or correctness: sample packing, an RL or preference stage (`rl: dpo`,
    `stage: dpo`), activation offloading, kernels that patch the model, a DeepSpeed or FSDP setup whose
    number of GPUs the config does not state (its `deepspeed` and `fsdp_config` keys are read into the
    distributed section: docs/distributed-configs.md).
    Each such key gets a finding at its line saying what is checked in its place. A recipe whose
    `distributed.world_size` is `launcher` (what `recipe-checks convert` writes for such a config) gets
    the same finding: its sharding is checked without a world size.

    ## Why it matters
    The memory estimate and the real steps are of one supervised step on one GPU with the unpatched
    model. With ZeRO-3 the real peak is lower; with DPO's chosen and rejected sequences it is higher:
    a verdict on the rest of the recipe is no verdict on these settings.

    ## Example
        rl: dpo
        deepspeed: deepspeed_configs/zero3.json   # and no world_size

    ## Use instead
    Keep the settings; read the vram verdict as that of one supervised step on one GPU, or check the
    same recipe without them (`recipe-checks convert FILE` writes it).
    """

    id = "RC111"
    name = "not-checked"
    check = "schema"
    severity = Severity.WARNING
    why = "the checks judge one supervised step on one GPU with the unpatched model, not this setting"

    def run(self, ctx):
        translation = translation_of(ctx.state)
        if translation is None:
            yield from self._launcher_world_size(ctx)
            return
        for path, what in translation.not_checked:
            yield self.finding(
                ctx,
                f"'{path[-1]}' is not checked: {what}",
                path,
                help=f"read the verdicts on {ctx.path} as holding without '{path[-1]}'; measure this setting on "
                "the GPU itself",
            )

    def _launcher_world_size(self, ctx):
        """A native recipe that leaves the number of GPUs to the launcher: the note a translated config without
        one gets (its own note says so there), not an error, so converting the config changes no verdict."""
        recipe = ctx.state.recipe
        distributed = recipe.distributed if recipe is not None else None
        if distributed is None or distributed.world_size != LAUNCHER:
            return
        yield self.finding(
            ctx,
            f"'world_size' is not checked: {LAUNCHER} leaves the number of GPUs to the launcher, so the "
            f"{distributed.strategy} sharding is checked without a world size (as on one GPU)",
            ("distributed", "world_size"),
            help="give distributed.world_size: N, the number of GPUs the run is launched on, to check the sharding",
        )
