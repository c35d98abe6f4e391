"""RC216: bitsandbytes quantization of an MoE model whose experts are fused 3-D parameters quantizes
attention only; the experts stay unquantized and the kbit preparation upcasts them to float32."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule

_PREPARED_BYTES = 4  # float32, after prepare_model_for_kbit_training
_BF16_BYTES = 2


class UnquantizedExperts(Rule):
    """
    ## What it checks
    A recipe that loads a mixture-of-experts model in 4 or 8 bits with bitsandbytes, where the model's
    transformers implementation fuses the experts into 3-D parameters (Mixtral, Qwen2-MoE, Qwen3-MoE,
    ... in transformers 5: `mlp.experts.gate_up_proj`, `mlp.experts.down_proj`).

    ## Why it matters
    transformers' bitsandbytes integration replaces `nn.Linear` layers only: the experts, 3-D
    `nn.Parameter`s that hold almost all of the model (45.1B of Mixtral 8x7B's 46.7B parameters), are
    loaded unquantized (90 GB in bf16). peft's `prepare_model_for_kbit_training`, which QLoRA scripts
    call (peft's QLoRA recipe; the memory trace follows it; TRL 1.16's trainers no longer do), casts
    every unquantized bf16/fp16 parameter to float32: the "4-bit" Mixtral then holds 180 GB of
    float32 experts, more than the same LoRA without quantization, not a quarter of it.

    ## Example
        model: mistralai/Mixtral-8x7B-v0.1
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
        lora: {target_modules: [q_proj, k_proj, v_proj, o_proj]}

    ## Use instead
    LoRA without quantization, in bf16, on a GPU that holds the bf16 model (the vram check says
    which):

        model: mistralai/Mixtral-8x7B-v0.1
        lora: {target_modules: [q_proj, k_proj, v_proj, o_proj]}
        training: {bf16: true, gradient_checkpointing: true}
        hardware: {gpu: h200}
    """

    id = "RC216"
    name = "unquantized-experts"
    check = "quantization"
    reads = frozenset({"model", "quantization"})
    needs = frozenset({"model"})
    severity = Severity.WARNING
    why = ("bitsandbytes quantizes nn.Linear layers only: fused 3-D experts stay unquantized, and the kbit "
           "preparation upcasts them to float32")

    def run(self, ctx):
        q = ctx.recipe.quantization
        if q is None or q.quant_method != "bitsandbytes" or not (q.load_in_4bit or q.load_in_8bit):
            return
        from recipe_checks.memory.experts import fused_expert_parameters

        model = ctx.model
        experts = sum(p.numel() for _, p in fused_expert_parameters(model))
        if not experts:
            return
        total = sum(p.numel() for p in model.parameters())
        bits = "4" if q.load_in_4bit else "8"
        yield self.finding(
            ctx,
            f"load_in_{bits}bit leaves {type(model).__name__}'s experts unquantized: its {experts / 1e9:.2f}B expert "
            f"parameters ({experts / total:.0%} of the model) are fused 3-D parameters, not the Linear layers "
            f"bitsandbytes quantizes; they load in 16 bits ({experts * _BF16_BYTES / 1e9:.1f} GB), and in float32 "
            f"({experts * _PREPARED_BYTES / 1e9:.1f} GB) once prepare_model_for_kbit_training upcasts them",
            ("quantization", f"load_in_{bits}bit"),
            help="drop the quantization section and train LoRA in bf16 on a GPU that holds the model (the vram "
                 "check traces it): quantization saves only the attention layers' share here",
        )
