"""Benchmark: cpu-step and cpu-train of every shipped recipe, fixtures built and libraries imported.

Run:  pytest bench/test_real_steps.py --benchmark-only
Each round starts from a fresh RecipeState (nothing memoised), with the tiny-random fixtures already in
the cache, as in a second pytest session. The figures are written in the README.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_checks.context import RecipeState
from recipe_checks.engine import run_check
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _run_all(check: str) -> int:
    catalog = GpuCatalog.load(())
    passed = 0
    for path in RECIPES:
        state = RecipeState.from_file(path, path.name, Options(), catalog)
        result = run_check(state, check)
        assert result.error is None and result.skipped is None and not result.errors, (path, result)
        passed += 1
    return passed


@pytest.mark.parametrize("check", ["cpu-step", "cpu-train"])
def test_real_checks_of_the_shipped_recipes(benchmark, check):
    _run_all(check)  # builds the fixtures and imports the libraries: not measured
    passed = benchmark.pedantic(_run_all, args=(check,), rounds=3, iterations=1)
    assert passed == len(RECIPES)
    benchmark.extra_info["recipes"] = passed
