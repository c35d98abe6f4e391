"""Check that tracing four decoder blocks and replaying block 1 for the rest equals the full trace.

Run:  python bench/check_block_replication.py [--models ID ...] [--settings NAME ...]
For every bundled model config and a spread of settings (LoRA with and without checkpointing, eager
attention, Liger's chunked loss, QLoRA with a paged 8-bit optimizer, DoRA, a full fine-tune with
accumulation), trace the step both ways and compare the whole memory curve (every allocation and free, its bytes and category,
in order), the peak, its phase, the breakdown at the peak, the bytes left at the end and the
parameter counts. Prints one line per case and the time of each trace;
exits 1 if any replicated trace differs from its full trace.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipe_checks.memory.step import NotPeriodic, StepSettings, build_step_model, run_step
from recipe_checks.models.resolve import bundled_ids, resolve_model_config

LORA = (("lora_alpha", 16), ("r", 16), ("target_modules", "all-linear"), ("task_type", "CAUSAL_LM"))
DORA = tuple(sorted(dict(LORA, use_dora=True).items()))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", True), ("quant_storage", "uint8"), ("quant_type", "nf4"),
       ("skip", ()))
BASE = {"micro_batch": 2, "seq_len": 512, "precision": "bfloat16", "weights_dtype": "bfloat16",
        "optim": "adamw_torch", "attn_implementation": None}  # None: transformers' default per model
SETTINGS = {
    "lora": StepSettings(**BASE, lora=LORA),
    "lora-checkpointing": StepSettings(**BASE, lora=LORA, gradient_checkpointing=True),
    "lora-eager": StepSettings(**{**BASE, "micro_batch": 1, "attn_implementation": "eager"}, lora=LORA),
    "qlora-paged-checkpointing": StepSettings(**{**BASE, "optim": "paged_adamw_8bit"}, lora=LORA, quant_4bit=NF4,
                                              gradient_checkpointing=True),
    "lora-chunked-loss": StepSettings(**BASE, lora=LORA, chunked_loss=True),
    "dora": StepSettings(**{**BASE, "micro_batch": 1}, lora=DORA),
    "full-accumulation": StepSettings(**{**BASE, "micro_batch": 1, "seq_len": 256}, gradient_accumulation=4,
                                      gradient_checkpointing=True),
}


def summary(trace) -> tuple:
    t = trace.timeline
    return (t.peak_bytes, t.peak_phase, t.breakdown, t.end_bytes, t.events, trace.trainable_params,
            trace.total_params, trace.quantized_layers, trace.curve)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--max-params", type=float, default=15e9, help="skip full fine-tunes of larger models")
    args = parser.parse_args(argv)
    failures = 0
    for model_id in args.models or bundled_ids():
        resolved = resolve_model_config(model_id)
        for name in args.settings:
            settings = SETTINGS[name]
            start = time.perf_counter()
            try:
                built = build_step_model(resolved, settings, replicate_blocks=True)
                if not built.copies:
                    print(f"{model_id:45} {name:27} not replicated: {'; '.join(built.notes) or 'too few blocks'}")
                    continue
                replicated = run_step(built, settings, keep_curve=True)
            except NotPeriodic as exc:
                print(f"{model_id:45} {name:27} falls back to the full trace: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001  a setting this model cannot run is reported, not fatal
                print(f"{model_id:45} {name:27} not traced: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            fast = time.perf_counter() - start
            if name.startswith("full") and replicated.total_params > args.max_params:
                print(f"{model_id:45} {name:27} skipped: full fine-tune of {replicated.total_params / 1e9:.0f}B")
                continue
            start = time.perf_counter()
            full = run_step(build_step_model(resolved, settings), settings, keep_curve=True)
            slow = time.perf_counter() - start
            same = summary(replicated) == summary(full)
            failures += not same
            print(f"{model_id:45} {name:27} {'equal' if same else 'DIFFERENT'}  peak {full.timeline.peak_bytes:>14,} B"
                  f"  {fast:5.2f} s vs {slow:6.2f} s")
            if not same:
                print(f"    replicated {summary(replicated)[:-1]}\n    full       {summary(full)[:-1]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
