"""Trace time of a sharded step against the one-GPU trace of the same model and settings.

Run:  python bench/distributed_trace_time.py [--repeat N]
Issue 11's goal: a rank's FSDP2 trace on the fake process group stays within 2x of the one-GPU trace.
Each pair traces the same model and settings, once as one GPU and once as rank 0 of the world size shown
(the trace cache is cleared before each run; the best of --repeat runs is kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipe_checks.memory.sharding import ShardPlan
from recipe_checks.memory.step import StepSettings, _trace_cached, trace_training_step
from recipe_checks.models.resolve import resolve_model_config

LORA = (("lora_alpha", 32), ("lora_dropout", 0.0), ("r", 16),
        ("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        ("task_type", "CAUSAL_LM"))
CASES = [
    ("Llama-3.1-8B LoRA", "meta-llama/Llama-3.1-8B", dict(lora=LORA), ShardPlan("fsdp", 8)),
    ("Llama-3.1-8B full", "meta-llama/Llama-3.1-8B", {}, ShardPlan("zero3", 4, True, "bfloat16", "bfloat16",
                                                                    offload=True)),
    ("Llama-3.1-70B LoRA", "meta-llama/Llama-3.1-70B", dict(lora=LORA), ShardPlan("fsdp", 8)),
]


def timed(resolved, settings: StepSettings, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        _trace_cached.cache_clear()
        start = time.perf_counter()
        trace_training_step(resolved, settings)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warm = resolve_model_config("meta-llama/Llama-3.1-8B")  # first-use costs (imports, kernels) out of the figures
    timed(warm, StepSettings(micro_batch=1, seq_len=128, distributed=ShardPlan("fsdp", 2)), 1)
    print(f"{'case':<22}{'one GPU':>10}{'sharded':>10}{'ratio':>8}  plan")
    for name, model, changes, plan in CASES:
        resolved = resolve_model_config(model)
        base = dict(micro_batch=1, seq_len=2048, precision="bfloat16", weights_dtype="bfloat16",
                    gradient_checkpointing=True, **changes)
        one = timed(resolved, StepSettings(**base), args.repeat)
        sharded = timed(resolved, StepSettings(**base, distributed=plan), args.repeat)
        print(f"{name:<22}{one:>9.1f}s{sharded:>9.1f}s{sharded / one:>7.2f}x  {plan.label} x {plan.world_size}")


if __name__ == "__main__":
    main()
