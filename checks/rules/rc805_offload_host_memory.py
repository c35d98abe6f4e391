"""RC805: what ZeRO or FSDP offloads to the CPU fits in the host memory of each node."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.recipe.schema import Method
from recipe_checks.rules.base import Rule

# DeepSpeed 0.19.6, runtime/zero/stage3.py estimate_zero3_model_states_mem_needs and stage_1_and_2.py
# estimate_zero2_model_states_mem_needs: with the optimizer offloaded, 16 bytes a trained parameter (fp32
# master weights 4, Adam momentum and variance 8, fp32 gradients 4 for CPU Adam), with the parameters too 2
# more (the 16-bit partitions); divided among the nodes, each node's ranks holding their partitions; and a
# buffer factor of 1.5 on top.
_OPTIMIZER_BYTES = 16
_BUFFER_FACTOR = 1.5
_WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_GIB = 2**30


class OffloadHostMemory(Rule):
    """
    ## What it checks
    With `hardware.host_memory_gib` (the CPU memory of one node) given, and ZeRO's `offload_optimizer` or
    `offload_param` (`cpu`), or FSDP's `offload_policy: cpu`: what is offloaded fits in it. Per node, as
    DeepSpeed's own estimators count it (estimate_zero3_model_states_mem_needs in
    runtime/zero/stage3.py, estimate_zero2_model_states_mem_needs in stage_1_and_2.py): 16 bytes a
    trained parameter for the offloaded optimizer (fp32 master weights, Adam's two moments, fp32
    gradients for CPU Adam), the 16-bit parameters (2 bytes each; 0.5 for 4-bit, 1 for 8-bit weights)
    where they are offloaded too, divided among the nodes. FSDP's CPUOffloadPolicy puts the sharded
    parameters, their gradients and Adam's states on the host. An error where that is more than the
    host memory; a warning where DeepSpeed's estimators' 1.5x buffer factor takes it past.

    ## Why it matters
    All the ranks of a node offload into the one host: past its memory the run is killed by the
    kernel's OOM killer, or swaps until the step takes hours, after the model has loaded on every GPU.

    ## Example
        model: meta-llama/Llama-3.1-70B
        distributed: {strategy: zero3, world_size: 8, zero: {offload_optimizer: cpu, offload_param: cpu}}
        hardware: {gpu: h100, host_memory_gib: 512}     # a full fine-tune offloads 1.3 TiB

    ## Use instead
    More nodes (each holds a share), LoRA (only the adapters have optimizer states), offload to NVMe
    (`offload_optimizer: nvme`), or no `offload_param` where the parameters fit on the GPUs.
    """

    id = "RC805"
    name = "offload-host-memory"
    check = "optimizer"
    reads = frozenset({"distributed", "hardware", "lora", "quantization", "model", "training"})
    needs = frozenset({"model"})
    why = "every rank of a node offloads into the same host memory: past it the run is killed or swaps"

    def run(self, ctx):
        recipe = ctx.recipe
        distributed, host = recipe.distributed, recipe.hardware.host_memory_gib
        if distributed is None or host is None:
            return
        zero, fsdp = distributed.zero, distributed.fsdp
        optimizer = zero is not None and zero.offload_optimizer == "cpu"
        params = zero is not None and zero.offload_param == "cpu"
        fsdp_offload = fsdp is not None and fsdp.offload_policy == "cpu"
        if not (optimizer or params or fsdp_offload):
            return
        total = sum({id(p): p.numel() for p in ctx.model.parameters()}.values())
        trainable = total if recipe.method is Method.FULL else _adapter_params(ctx)
        if trainable is None:
            return
        weight = _weight_bytes(recipe)
        nodes = distributed.node_count
        parts: list[tuple[str, float]] = []
        if optimizer:
            parts.append((f"optimizer states {_OPTIMIZER_BYTES} B x {trainable / 1e9:.2f}B trained parameters",
                          _OPTIMIZER_BYTES * trainable))
        if params:
            parts.append((f"parameters {weight:g} B x {total / 1e9:.2f}B", weight * total))
        if fsdp_offload:
            state = 16 if recipe.method is not Method.FULL else 3 * weight  # param + grad + Adam's two moments
            parts.append((f"sharded parameters {weight:g} B x {total / 1e9:.2f}B", weight * total))
            parts.append((f"gradients and Adam states {state:g} B x {trainable / 1e9:.2f}B trained", state * trainable))
        need = sum(b for _, b in parts) / nodes
        buffered = need * _BUFFER_FACTOR
        if buffered <= host * _GIB:
            return
        per = f" per node ({nodes} nodes)" if nodes > 1 else " on the one node"
        what = "ZeRO" if zero is not None else "FSDP"
        key = ("hardware", "host_memory_gib")
        details = [f"{label}: {b / nodes / _GIB:,.1f} GiB a node" for label, b in parts]
        if need > host * _GIB:
            yield self.finding(
                ctx, f"{what} offloads {need / _GIB:,.1f} GiB{per}, more than the {host:g} GiB of host memory",
                key, details=details,
                help="use more nodes, LoRA instead of a full fine-tune, offload to nvme, or offload less "
                     "(offload_param off where the parameters fit on the GPUs)",
            )
        else:
            yield self.finding(
                ctx, f"{what} offloads {need / _GIB:,.1f} GiB{per}, {buffered / _GIB:,.1f} GiB with DeepSpeed's "
                f"1.5x buffer factor: more than the {host:g} GiB of host memory",
                key, details=details, severity=Severity.WARNING,
                help="leave the host room for pinned buffers and the data loader: more nodes, or offload less",
            )


def _adapter_params(ctx) -> int | None:
    from recipe_checks.rules._targets_common import analysis

    result = analysis(ctx)
    return result.adapter_params if result is not None else None


def _weight_bytes(recipe) -> float:
    """Bytes a frozen or offloaded weight takes: bitsandbytes' packed 4 or 8 bits, else the model's dtype
    (bfloat16 where the recipe leaves it to the checkpoint, as most checkpoints are)."""
    q = recipe.quantization
    if q is not None and q.quant_method == "bitsandbytes" and q.load_in_4bit:
        return 0.5
    if q is not None and q.quant_method == "bitsandbytes" and q.load_in_8bit:
        return 1
    return _WEIGHT_BYTES.get(recipe.model.torch_dtype or "bfloat16", 2)
