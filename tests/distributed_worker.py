"""One rank of a real FSDP2 training step on the CPU (gloo), accounted as the fake trace accounts it.

Run by tests/test_distributed.py as `python -m tests.distributed_worker CASES RANK WORLD STORE OUT` in
WORLD processes; each runs the comma-separated CASES one after the other and writes its rank's memory curve
and timeline of each to OUT as JSON.
"""

from __future__ import annotations

import json
import sys


def main(cases: str, rank: int, world_size: int, store_path: str, out: str) -> None:
    """Run each case of the comma-separated `cases` in one process group, one after the other."""
    import torch
    import torch.distributed as dist

    from recipe_checks.memory.step import build_traced_model, run_step
    from tests.test_distributed import CASES, resolved

    results = {}
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
    try:
        for case in cases.split(","):
            torch.manual_seed(0)
            config, settings = CASES[case]
            built = build_traced_model(resolved(config), settings, real=True)
            trace = run_step(built, settings, keep_curve=True)
            del built
            timeline = trace.timeline
            results[case] = {"peak": timeline.peak_bytes, "phase": timeline.peak_phase,
                             "breakdown": timeline.breakdown, "curve": trace.curve}
    finally:
        dist.destroy_process_group()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
