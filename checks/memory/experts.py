"""Mixture-of-experts models in the trace: transformers' grouped_mm experts on fake tensors, and what a
QLoRA or target_parameters run really does with the fused 3-D expert parameters, said in the notes.

transformers 5 fuses each block's experts into 3-D parameters (MixtralExperts' gate_up_proj and
down_proj, E x 2I x H and E x H x I) and runs them with its grouped_mm experts implementation
(integrations/moe.py), its default for Mixtral, Qwen2-MoE and Qwen3-MoE: tokens sorted by expert, one
torch grouped matmul per projection, every tensor tokens x top-k rows whatever the routing.
"""

from __future__ import annotations

import torch

from recipe_checks import compat
from recipe_checks.memory.blocks import TEMPLATE_BLOCK

GROUPED_MM_OP = "aten::_grouped_mm"


def grouped_mm_as_on_cuda(tracker, mat_a, mat_b, offs=None, bias=None, out_dtype=None):
    """aten::_grouped_mm as it runs: bf16 operands take torch's fast kernel, whose fake kernel the trace
    runs. Others (the float32 experts that prepare_model_for_kbit_training leaves, and their float32
    inputs) take torch's fallback on CUDA and on the CPU (GroupedBlas.cpp: _grouped_mm_fallback, one mm
    per expert into the output) that the fake kernel refuses (its check is the fast kernel's, bf16
    only): the same output, laid out by torch's own output function, and nothing else allocated."""
    fast = mat_a.dtype == torch.bfloat16 and mat_b.dtype == torch.bfloat16 and out_dtype in (None, torch.bfloat16)
    if fast or not compat.is_fake(mat_a):  # real tensors (the exactness tests) run the real kernel
        out = torch.ops.aten._grouped_mm.default(mat_a, mat_b, offs, bias, out_dtype)
    else:
        out = compat.grouped_mm_output(mat_a, mat_b, offs, out_dtype)
    tracker.track(out, op=GROUPED_MM_OP)
    return out


def fused_expert_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's 3-D parameters (fused experts), by name, each once."""
    seen: set[int] = set()
    found = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.dim() >= 3 and id(p) not in seen:
            seen.add(id(p))
            found.append((name, p))
    return found


EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, Qwen MoE, DeepSeek


def config_has_experts(config: dict) -> bool:
    """Whether a config.json (or its text_config) declares routed experts, before any model is built."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return any(isinstance(c.get(k), int) and c[k] > 1 for c in (config, text) for k in EXPERT_COUNT_KEYS)


def expert_count(params, blocks, copies: int, template: int) -> int:
    """How many expert parameters the full-size model has: the built ones, and the template block's for
    each block left out."""
    total = sum(p.numel() for _, p in params)
    if copies and blocks is not None:
        in_template = {id(p) for p in blocks[template].parameters()}
        total += copies * sum(p.numel() for _, p in params if id(p) in in_template)
    return total


# transformers' experts implementations whose tensors have shapes the routing does not change: grouped_mm
# (tokens x top-k rows, sorted by expert) and batched_mm (each token's top-k experts' weights gathered).
# 'eager' loops over the experts that got tokens, each with its own tokens: shapes only real data decide.
ROUTING_FREE = ("grouped_mm", "batched_mm")


def routing_note(model, real: bool) -> str | None:
    """How the trace stands for the routing, which fake tensors do not have (None for a dense model).
    TraceError, saying why, for experts whose tensors depend on it (unless the tensors are `real`)."""
    from recipe_checks.memory.errors import TraceError

    if not fused_expert_parameters(model):
        return None
    implementation = compat.experts_implementation(model.config)
    if implementation in ROUTING_FREE:
        return (f"expert routing: transformers' {implementation} experts give every tensor of the expert forward and "
                "backward tokens x top-k rows, however the router splits the tokens, so the trace holds for any routing")
    if real:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft's wrapper
    raise TraceError(f"{type(base).__name__} runs its experts with transformers' '{implementation}' implementation, a "
                     "loop over the experts that got tokens, whose tensors the routing of real data decides; the memory "
                     "trace covers transformers' grouped_mm and batched_mm experts (grouped_mm is its default where a "
                     "model supports it: from_pretrained(..., experts_implementation='grouped_mm'))")


def upcast_experts_note(params, count: int, loaded_dtype: str) -> str | None:
    """A QLoRA model's experts, which bitsandbytes does not quantize and the kbit preparation upcasts:
    said plainly, with the count and the bytes (None when none was upcast)."""
    if not params or loaded_dtype == "float32" or any(p.dtype != torch.float32 for _, p in params):
        return None
    return (f"the experts are not quantized: transformers' bitsandbytes integration replaces nn.Linear layers "
            f"only, and the {count / 1e9:.2f}B expert parameters are 3-D nn.Parameters; "
            f"prepare_model_for_kbit_training then upcasts them from {loaded_dtype} to float32: "
            f"{count * 4 / 1e9:.1f} GB of expert weights (4 bytes a parameter)")


def param_wrapper_note(model, blocks, template: int) -> str | None:
    """What peft's target_parameters LoRA allocates on each forward (None when no parameter is targeted)."""
    wrapper = compat.lora_param_wrapper()
    targeted = {}
    for module in model.modules():
        if isinstance(module, wrapper):
            param = module.get_param()
            targeted[id(param)] = param
    if not targeted:
        return None
    in_block = blocks[template].parameters() if blocks is not None else []
    per_block = sum(p.numel() * p.element_size() for p in in_block if id(p) in targeted)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in targeted.values()})
    return ("lora.target_parameters: peft's ParamWrapper adds the low-rank update to the whole targeted parameter "
            f"on every forward (torch.baddbmm, W + BA, in {'/'.join(dtypes)}): a {per_block / 1e9:.2f} GB copy of "
            "each block's targeted experts, which grouped_mm keeps for the backward (every block's at once without "
            "gradient checkpointing), and its full-size gradient in the backward")


def step_notes(model, blocks, copies: int, settings, real: bool = False) -> list[str]:
    """What the trace of an MoE model's step says about its experts: how it stands for the routing, what
    target_parameters adapters allocate, and a QLoRA run's unquantized, upcast experts."""
    params = fused_expert_parameters(model)
    if not params:
        return []
    routing = routing_note(model, real)
    notes = [routing] if routing else []
    wrapped = param_wrapper_note(model, blocks, TEMPLATE_BLOCK) if settings.lora else None
    if wrapped:
        notes.append(wrapped)
    if settings.quant_4bit or settings.quant_8bit:
        upcast = upcast_experts_note(params, expert_count(params, blocks, copies, TEMPLATE_BLOCK), settings.weights_dtype)
        if upcast:
            notes.append(upcast)
    return notes
