"""Benchmark: the speed and memory of the estimate itself (one traced training step, no fixes).

Run:  pytest bench/test_estimate_speed.py --benchmark-only
Time: one trace after the libraries are imported (trace cache cleared each round).
Memory: the peak RSS of a fresh `recipe-checks estimate --no-fixes` process, imports included (its own
rusage, read when it is reaped), with the wall time of that process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe_checks.context import RecipeState
from recipe_checks.gpus import GpuCatalog
from recipe_checks.memory import step
from recipe_checks.memory.estimate import estimate
from recipe_checks.options import Options

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
CASES = {
    "llama3-8b-lora": RECIPES / "llama3-8b-lora-bf16-rtx4090.yaml",
    "llama3-70b-qlora-4096": EXAMPLES / "claim-llama3-70b-qlora-4090.yaml",
}


@pytest.mark.parametrize("case", CASES)
def test_estimate_time(benchmark, case):
    state = RecipeState.from_file(CASES[case], str(CASES[case]), Options(), GpuCatalog.load())
    gpu = GpuCatalog.load().get(state.recipe.hardware.gpu[0])
    resolved = state.resolved_model()
    result = benchmark.pedantic(
        lambda: estimate(state.recipe, resolved, gpu, with_fixes=False),
        setup=step._trace_cached.cache_clear, rounds=2, iterations=1,
    )
    assert result.peak_bytes > 0


@pytest.mark.parametrize("case", CASES)
def test_estimate_max_rss(benchmark, fresh_process, report_figure, case):
    run = benchmark.pedantic(
        lambda: fresh_process(["-m", "recipe_checks.cli", "estimate", str(CASES[case]), "--no-fixes", "--json"]),
        rounds=1, iterations=1,
    )
    assert run.returncode in (0, 1), run.stdout  # 0 fits, 1 does not; 2 would be bad input
    assert json.loads(run.stdout)["peak_bytes"] > 0  # it traced a step, not only imported
    benchmark.extra_info["max_rss_bytes"] = run.max_rss_bytes
    report_figure(f"estimate {case}: fresh process, max RSS {run.max_rss_bytes / 2**30:.2f} GiB")
