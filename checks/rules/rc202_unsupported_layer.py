"""RC202: every module a LoRA target matches is a layer type LoRA can wrap."""

from __future__ import annotations

from recipe_checks.rules._targets_common import analysis, target_key
from recipe_checks.rules.base import Rule


class UnsupportedLayer(Rule):
    """
    ## What it checks
    Each module the targets match is a type peft's LoRA can wrap (Linear, Embedding, Conv1d/2d/3d,
    transformers' Conv1D, MultiheadAttention, and their quantized versions). The answer comes from
    peft itself, asked on a meta-device copy of the module.

    ## Why it matters
    Targeting a container (`self_attn`, `mlp`), a norm or an activation makes get_peft_model raise,
    at the start of the run on the GPU.

    ## Example
        lora:
          target_modules: [self_attn, mlp]

    ## Use instead
        lora:
          target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
    """

    id = "RC202"
    name = "unsupported-layer"
    check = "target-modules"
    reads = frozenset({"model", "lora"})
    needs = frozenset({"model"})
    why = "peft raises when a target is a module type LoRA cannot wrap"
    stops_the_step = True

    def run(self, ctx):
        result = analysis(ctx)
        if result is None or not result.unsupported:
            return
        for match in result.matches:
            bad = [m for m in match.modules if m in result.unsupported]
            if not bad:
                continue
            types = sorted({result.unsupported[m] for m in bad})
            children = _wrappable_inside(ctx.model.get_submodule(bad[0]))
            inside = f" The LoRA-wrappable layers inside it are {', '.join(children)}." if children else ""
            experts = [p for p in result.fused_expert_params if p.startswith(bad[0] + ".")]
            if experts:
                short = ".".join(bad[0].split(".")[-2:])
                params = ", ".join(f"{short}.{p.rsplit('.', 1)[-1]}" for p in experts)
                inside += f" Its weights are fused 3-D parameters: adapt them with target_parameters: [{params}]."
            yield self.finding(
                ctx,
                f"target '{match.target}' matches {len(bad)} {'/'.join(types)} module(s) that LoRA cannot wrap, "
                f"e.g. {bad[0]}",
                target_key(ctx, match.target),
                help=f"target the layers inside instead.{inside} peft: {result.supported_types_text}".strip(),
            )


def _wrappable_inside(module) -> list[str]:
    from recipe_checks.targets import _linear_types

    names: list[str] = []
    for name, child in module.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if name and isinstance(child, _linear_types()) and leaf not in names:
            names.append(leaf)
    return names
