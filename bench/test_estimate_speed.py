"""Benchmark: the speed and memory of the estimate itself (one traced training step, no fixes).

Run:  pytest bench/test_estimate_speed.py --benchmark-only
Time: one trace after the libraries are imported (trace cache cleared each round).
Memory: max RSS of a fresh `recipe-checks estimate --no-fixes` process, imports included.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from checks.context import RecipeState
from checks.gpus import GpuCatalog
from checks.memory import step
from checks.memory.estimate import estimate
from checks.options import Options

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
def test_estimate_max_rss(case):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "checks.cli", "estimate", str(CASES[case]), "--no-fixes"],
                   check=False, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"\n{case}: max RSS {max(before, after) / 2**20:.2f} GiB")
