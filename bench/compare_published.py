"""Compare recipe-checks' traced peak with published measurements of peak GPU memory.

Run:  python bench/compare_published.py
Each entry of bench/published_measurements.yaml (source, quote and kind of figure for each) is
turned into the settings it states and traced; entries whose model has no config here, or whose
sequence length or batch is unstated, are listed as skipped. The figure compared is the traced
tensor peak (what torch.cuda.max_memory_allocated counts); 'reserved' figures also hold the caching
allocator's cache and 'nvidia-smi' ones the CUDA context, so they are expected to read higher.
Figures from other stacks (litgpt, torchtune) use their own model code and loss: see `framework`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipe_checks.gpus import GIB  # noqa: E402
from recipe_checks.memory.step import StepSettings, trace_training_step  # noqa: E402
from recipe_checks.models.resolve import ModelResolutionError, resolve_model_config  # noqa: E402

# torchtune's projection names -> transformers' (torchtune/modules/peft: LORA_ATTN_MODULES)
TORCHTUNE_NAMES = {"output_proj": "o_proj", "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
OPTIMIZERS = {None: "adamw_torch", "adamw": "adamw_torch"}


def settings_for(entry: dict) -> StepSettings | str:
    if not entry.get("micro_batch_size") or not entry.get("seq_len"):
        return "micro-batch or sequence length not stated"
    precision = {"bf16": "bfloat16", "bf16-true": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(
        entry.get("precision") or "", "bfloat16")
    lora = ()
    if entry["method"] in ("lora", "qlora", "dora"):
        targets = tuple(TORCHTUNE_NAMES.get(t, t) for t in entry.get("target_modules") or ())
        if not targets:
            return "target modules not stated"
        values = {"r": entry["lora_r"], "lora_alpha": entry.get("lora_alpha") or 2 * entry["lora_r"],
                  "target_modules": targets, "task_type": "CAUSAL_LM"}
        if entry["method"] == "dora":
            values["use_dora"] = True
        lora = tuple(sorted(values.items()))
    quant = ()
    q = entry.get("quantization") or {}
    if q.get("load_in_4bit"):
        quant = (("compute_dtype", q.get("bnb_4bit_compute_dtype") or precision),
                 ("double_quant", bool(q.get("bnb_4bit_use_double_quant"))), ("quant_storage", "uint8"),
                 ("quant_type", q.get("bnb_4bit_quant_type") or "nf4"), ("skip", ()))
    return StepSettings(
        micro_batch=int(entry["micro_batch_size"]), seq_len=int(entry["seq_len"]), precision=precision,
        weights_dtype=precision, optim=OPTIMIZERS.get(entry.get("optimizer"), entry.get("optimizer")),
        gradient_checkpointing=bool(entry.get("gradient_checkpointing")), lora=lora, quant_4bit=quant,
        max_grad_norm=0.0,
    )


def main() -> int:
    entries = yaml.safe_load((Path(__file__).with_name("published_measurements.yaml")).read_text())
    errors = []
    print(f"{'id':<44}{'kind':<10}{'published':>11}{'traced':>9}{'error':>9}  framework")
    for entry in entries:
        if entry["kind"] == "estimate":
            print(f"{entry['id']:<44}skipped: the published figure is itself an estimate")
            continue
        try:
            resolved = resolve_model_config(entry["model"])
        except ModelResolutionError:
            print(f"{entry['id']:<44}skipped: no config for {entry['model']} here")
            continue
        settings = settings_for(entry)
        if isinstance(settings, str):
            print(f"{entry['id']:<44}skipped: {settings}")
            continue
        try:
            traced = trace_training_step(resolved, settings).timeline.peak_bytes / GIB
        except Exception as exc:  # an entry the trace cannot run is reported, not fatal
            print(f"{entry['id']:<44}skipped: cannot trace ({type(exc).__name__}: {exc})"[:160])
            continue
        error = (traced - entry["figure_gib"]) / entry["figure_gib"]
        errors.append((abs(error), entry["id"]))
        print(f"{entry['id']:<44}{entry['kind']:<10}{entry['figure_gib']:>10.2f}G{traced:>8.2f}G{error:>+9.1%}  "
              f"{entry.get('framework', '')}")
    if errors:
        worst = max(errors)
        print(f"\ncompared {len(errors)}: median absolute error {statistics.median(e for e, _ in errors):.1%}, "
              f"worst {worst[0]:.1%} ({worst[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
