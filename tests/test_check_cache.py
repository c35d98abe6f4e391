"""The check-level result cache (checks/check_cache.py): an unchanged recipe is answered from the cache
without importing the libraries; a change to anything that decides a check recomputes it; what reads files
the key does not hold, or may be this machine's doing, is never stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, TINY_LLAMA, TINY_LLAMA_RECIPE

from recipe_checks import result_cache
from recipe_checks.context import RecipeState
from recipe_checks.engine import run_check
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options

# two errors the static checks find: a target that matches nothing, and a bf16 recipe on a T4
BROKEN = TINY_LLAMA_RECIPE.replace("[q_proj, v_proj]", "[q_proj, query_key_value]").replace("rtx4090", "t4")


def _recipe(tmp_path: Path, text: str = BROKEN) -> Path:
    (tmp_path / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA), encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _run(path: Path, cache: Path, check: str, gpu: str | None = "t4"):
    state = RecipeState.from_file(path, path.name, Options(cache_dir=str(cache)), GpuCatalog.load(()))
    return run_check(state, check, gpu)


def _stats(cache: Path) -> tuple[int, int]:
    stats = result_cache.store_for(cache).stats
    return stats.hits, stats.writes


def test_a_stored_check_gives_the_same_findings_and_skips_the_rules(tmp_path, monkeypatch):
    path, cache = _recipe(tmp_path), tmp_path / "cache"
    cold = {check: _run(path, cache, check) for check in ("target-modules", "precision")}
    assert {f.rule_id for r in cold.values() for f in r.errors} == {"RC201", "RC401"}
    import recipe_checks.engine

    monkeypatch.setattr(recipe_checks.engine, "rules_for", lambda check: 1 / 0)  # a rule that runs is a test failure
    hits = _stats(cache)[0]
    for check, result in cold.items():
        warm = _run(path, cache, check)
        assert (warm.findings, warm.suppressed, warm.skipped, warm.judged) == \
            (result.findings, result.suppressed, result.skipped, result.judged)
    assert _stats(cache)[0] == hits + 2


def test_an_unchanged_recipe_is_checked_without_importing_the_libraries(tmp_path):
    path, cache = _recipe(tmp_path), tmp_path / "cache"
    script = ("import sys; from recipe_checks.cli import main; code = main(['check', sys.argv[1]]); "
              "print(code, 'transformers' in sys.modules, 'torch' in sys.modules)")
    env = {**os.environ, "RECIPE_CHECKS_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    env.pop("RECIPE_CHECKS_NO_CACHE")

    def run(environ):
        done = subprocess.run([sys.executable, "-c", script, str(path)], env=environ, capture_output=True,
                              text=True, timeout=300)
        *report, last = done.stdout.splitlines()
        return last, report

    cold, cold_report = run(env)
    warm, warm_report = run(env)
    assert cold == "1 True True" and warm == "1 False False"
    assert warm_report == cold_report  # the same report, findings and their lines included
    assert run({**env, "RECIPE_CHECKS_NO_CACHE": "1"})[0] == "1 True True"


def test_a_change_to_the_recipe_or_its_model_config_recomputes_the_check(tmp_path):
    path, cache = _recipe(tmp_path), tmp_path / "cache"
    assert [f.rule_id for f in _run(path, cache, "target-modules").errors] == ["RC201"]
    path.write_text(BROKEN.replace("query_key_value", "k_proj"), encoding="utf-8")
    assert _run(path, cache, "target-modules").errors == []
    # the model's own config: a GPT-NeoX-style model names its attention query_key_value
    path.write_text(BROKEN, encoding="utf-8")
    neox = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512}
    (tmp_path / "tiny-llama.json").write_text(json.dumps(neox), encoding="utf-8")
    assert [f.message for f in _run(path, cache, "target-modules").errors if "q_proj" in f.message]
    assert not [f for f in _run(path, cache, "target-modules").errors if "query_key_value" in f.message]


def test_a_recipe_reading_a_distributed_file_or_a_refused_step_is_not_stored(tmp_path, monkeypatch):
    import recipe_checks.run.cpu_step

    cache = tmp_path / "cache"
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}), encoding="utf-8")
    distributed = _recipe(tmp_path, TINY_LLAMA_RECIPE + "distributed: {deepspeed: ds.json, world_size: 2}\n")
    _run(distributed, cache, "target-modules")
    assert _stats(cache) == (0, 0)
    steps = []
    real_run = recipe_checks.run.cpu_step._run
    monkeypatch.setattr(recipe_checks.run.cpu_step, "_run", lambda state: steps.append(1) or real_run(state))
    refused = _recipe(tmp_path, TINY_LLAMA_RECIPE.replace("learning_rate: 2.0e-4",
                                                          "learning_rate: 2.0e-4\n  adam_beta1: 1.5"))
    for _ in range(2):
        assert [f.rule_id for f in _run(refused, cache, "cpu-step", None).errors] == ["RC701"]
    assert len(steps) == 2  # run again: a refusal may be this machine's doing
