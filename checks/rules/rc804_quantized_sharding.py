"""RC804: bitsandbytes weights sharded by FSDP or ZeRO-3 are stored in the dtype of the other parameters."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule

_FLOATS = ("bfloat16", "float16", "float32")


class QuantizedSharding(Rule):
    """
    ## What it checks
    A recipe that shards the parameters (`strategy: fsdp` or `zero3`) and loads the model with
    bitsandbytes: in 4 bits, `bnb_4bit_quant_storage` is set to the dtype the model's other parameters
    are loaded in (`model.torch_dtype`, else the training precision); in 8 bits (LLM.int8()), it is
    refused.

    ## Why it matters
    FSDP shards float tensors only, and a shard group holds one dtype; bitsandbytes packs 4-bit weights
    into uint8 unless `quant_storage` says otherwise (bitsandbytes 0.50.2 docs, fsdp_qlora.md: "FSDP only
    supports sharding float data types ... quantized weights are typically stored as integer data types
    (uint8)"). peft's FSDP and DeepSpeed ZeRO-3 QLoRA guides (docs/source/accelerate/fsdp.md and
    deepspeed.md) load the model with `bnb_4bit_quant_storage` equal to `torch_dtype` for that reason.
    `quant_storage` exists for 4-bit weights only (Linear4bit, Params4bit): LLM.int8()'s int8 weights
    have no float storage to shard, and ZeRO-3 refuses them. FSDP2 (`strategy: fsdp`) shards each parameter
    on its own rather than one flat tensor, and Axolotl runs 8-bit LoRA under it: that case is a warning
    that the sharding is not checked, not an error.

    ## Example
        model: {id: meta-llama/Llama-3.1-70B, torch_dtype: bfloat16}
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
        distributed: {strategy: fsdp, world_size: 2}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_quant_storage: bfloat16}
    """

    id = "RC804"
    name = "quantized-sharding"
    check = "quantization"
    reads = frozenset({"distributed", "quantization", "model", "training"})
    why = "FSDP and ZeRO-3 shard float tensors of one dtype: bitsandbytes' packed weights must be stored in it"
    stops_the_step = True

    def run(self, ctx):
        recipe = ctx.recipe
        q, distributed = recipe.quantization, recipe.distributed
        if distributed is None or not distributed.shards_parameters or q is None or q.quant_method != "bitsandbytes":
            return
        mode = "FSDP" if distributed.strategy == "fsdp" else "ZeRO-3"
        if q.load_in_8bit and not q.load_in_4bit and distributed.strategy == "fsdp":
            # FSDP2 shards each parameter on its own (fully_shard: no flat parameter of one dtype), and Axolotl runs
            # 8-bit LoRA so (examples/glm47-flash/lora_fsdp.yaml at 067b021, on 2 x 48 GB): not refused, not modelled
            yield self.finding(
                ctx, "FSDP2 shards LLM.int8()'s 8-bit weights parameter by parameter, which recipe-checks does not "
                "model: the sharding of this recipe is not checked",
                ("quantization", "load_in_8bit"), severity=Severity.WARNING,
                help="read the memory verdict as that of 8-bit weights sharded like the others; measure the run on "
                     "its GPUs, or load in 4 bits with bnb_4bit_quant_storage (QLoRA with FSDP), which is modelled",
            )
            return
        if q.load_in_8bit and not q.load_in_4bit:
            yield self.finding(
                ctx, f"{mode} shards the parameters, and LLM.int8()'s 8-bit weights cannot be sharded",
                ("quantization", "load_in_8bit"),
                help="load the model in 4 bits with bnb_4bit_quant_storage (QLoRA with FSDP or ZeRO-3), or use "
                     "strategy zero2 / ddp, which do not shard the weights",
            )
            return
        if not q.load_in_4bit:
            return
        dtype = recipe.model.torch_dtype if recipe.model.torch_dtype in _FLOATS else recipe.training_dtype
        storage = q.bnb_4bit_quant_storage
        if storage == dtype:
            return
        key = ("quantization", "bnb_4bit_quant_storage") if storage is not None else ("quantization", "load_in_4bit")
        said = f"bnb_4bit_quant_storage is '{storage}'" if storage is not None else \
            "bnb_4bit_quant_storage is not set (uint8)"
        yield self.finding(
            ctx, f"{mode} shards the parameters but {said}, not {dtype}, the dtype of the other parameters",
            key,
            help=f"set bnb_4bit_quant_storage: {dtype} (and model.torch_dtype: {dtype}), as peft's "
                 f"{'FSDP' if mode == 'FSDP' else 'DeepSpeed ZeRO-3'} QLoRA guide does",
        )
