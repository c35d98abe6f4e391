"""Progress on long runs: the fixes `estimate` traces tick a bar on a terminal, and nothing shows elsewhere."""

from __future__ import annotations

import json

from recipe_checks import progress
from recipe_checks.cli import EXIT_FINDINGS
from tests.test_baseline import RECIPE, TINY_LLAMA
from tests.test_lint import _run_with_a_terminal_on_stderr

# far below the CUDA context: nothing fits, so every fix is traced (a two-layer Llama traces in a fraction of a second)
TOO_SMALL = RECIPE.replace("hardware: {gpu: rtx4090}", "hardware: {gpu: rtx4090, vram_budget_gib: 0.5}")


def _recipe(tmp_path):
    (tmp_path / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA))
    path = tmp_path / "r.yaml"
    path.write_text(TOO_SMALL)
    return path


def test_each_traced_fix_ticks_once_with_its_name(tmp_path):
    from recipe_checks.context import RecipeState
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.options import Options

    catalog = GpuCatalog.load(())
    state = RecipeState.from_file(_recipe(tmp_path), "r.yaml", Options(), catalog)
    ticks: list[str] = []
    with progress.listening(ticks.append):
        result = estimate(state.recipe, state.resolved_model(), catalog.get("rtx4090"))
    assert not result.fits and result.fixes
    assert {fix.name for fix in result.fixes if not fix.parts} <= set(ticks)
    assert "gradient checkpointing" in " ".join(ticks)
    progress.tick("outside any bar")  # no bar open: nothing happens, nothing fails


def test_estimate_shows_its_tracing_on_a_terminal_and_not_in_a_pipe(tmp_path):
    path = _recipe(tmp_path)
    code, out, terminal = _run_with_a_terminal_on_stderr("estimate", str(path))
    assert code == EXIT_FINDINGS
    assert "recipe-checks estimate: tracing" in terminal and "trace" in terminal
    assert "tracing" not in out and "does NOT fit" in out
    assert not progress.wanted()  # this test's stderr is captured, not a terminal
