"""RC806: ZeRO-1/2 on a LoRA recipe shard only the adapters' small states; every GPU keeps the whole frozen base."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.recipe.schema import Method
from recipe_checks.rules.base import Rule

_STATE_BYTES = {"zero1": 12, "zero2": 16}  # fp32 master + Adam moments (+ fp32 gradients at stage 2), per parameter


class ShardedAdaptersOnly(Rule):
    """
    ## What it checks
    A LoRA, DoRA or QLoRA recipe with `strategy: zero1` or `zero2` on more than one GPU.

    ## Why it matters
    ZeRO-1 partitions the optimizer states and ZeRO-2 the gradients too; neither partitions the
    parameters. With adapters, the states are those of the adapter parameters only (a few hundred MiB),
    while the frozen base model, the bulk of the memory, is whole on every GPU (peft's DeepSpeed guide:
    stage 1 shards the optimizer states, stage 2 also the gradients, stage 3 also the parameters). The
    sharding saves little and adds DeepSpeed's buffers and communication; only ZeRO-3 or FSDP shard the
    frozen base.

    ## Example
        lora: {r: 16, target_modules: all-linear}
        distributed: {strategy: zero2, world_size: 8}

    ## Use instead
        distributed: {strategy: zero3, world_size: 8}   # or fsdp: the frozen base is sharded too
        # or strategy: ddp, where the base fits on each GPU and the states are small anyway
    """

    id = "RC806"
    name = "sharded-adapters-only"
    check = "optimizer"
    severity = Severity.WARNING
    reads = frozenset({"distributed", "lora", "quantization", "model"})
    needs = frozenset({"model"})
    why = "ZeRO-1/2 shard optimizer states and gradients, not the frozen base model every GPU still holds whole"

    def run(self, ctx):
        recipe = ctx.recipe
        distributed = recipe.distributed
        if distributed is None or distributed.strategy not in _STATE_BYTES or recipe.method is Method.FULL:
            return
        if distributed.size_known and distributed.size == 1:
            return  # RC807's case
        from recipe_checks.rules._targets_common import analysis

        result = analysis(ctx)
        saved = ""
        if result is not None and result.adapter_params:
            ranks = distributed.size if distributed.size_known else 2
            per_gpu = result.adapter_params * _STATE_BYTES[distributed.strategy] * (1 - 1 / ranks)
            saved = (f": it saves {per_gpu / 2**20:,.0f} MiB a GPU of the {result.adapter_params / 1e6:.1f}M adapter "
                     f"parameters' states, while each GPU holds all {result.total_params / 1e9:.2f}B base parameters")
        yield self.finding(
            ctx, f"{distributed.strategy} on a {recipe.method_label} recipe shards only the adapters' states{saved}",
            ("distributed", "strategy") if "strategy" in (ctx.loaded.data.get("distributed") or {}) else ("distributed",),
            help="use strategy zero3 or fsdp to shard the frozen base too (with QLoRA: bnb_4bit_quant_storage), or "
                 "ddp where the base fits on each GPU",
        )
