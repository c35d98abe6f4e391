"""Fixtures for recipe-checks' own tests.

tests/corpus holds broken recipes on purpose: they are checked through pytester in test_corpus.py,
never collected as part of this suite; tests/hostile holds malformed and hostile input, and
tests/formats other tools' configs with the findings each must give (test_formats.py), likewise.

Two tiers: `pytest tests/ -m "not slow"` for the edit-test loop, `pytest tests/` for everything.
"""

from __future__ import annotations

import os
import tempfile

# Tiny-random fixtures (cpu-step, cpu-train) are built into a huggingface_hub cache of the test runs' own,
# never the user's, and loaded offline as CI loads them. Set before huggingface_hub reads its constants.
os.environ["HF_HUB_CACHE"] = os.environ.get("RECIPE_CHECKS_TEST_HUB_CACHE") or os.path.join(
    tempfile.gettempdir(), "recipe-checks-tests-hub-cache")
os.environ["HF_HUB_OFFLINE"] = "1"
# The result cache (checks/result_cache.py) is off for the suite, in this process and the ones it starts: tests
# monkeypatch libraries and the engine, which no cache key sees, and the suite never reads a user's cache. A test
# opts in with the `result_cache_dir` fixture, or by setting RECIPE_CHECKS_CACHE_DIR with RECIPE_CHECKS_NO_CACHE
# removed (it wins over the directory), or by passing --recipes-cache-dir / --cache-dir to the run it starts.
os.environ["RECIPE_CHECKS_NO_CACHE"] = "1"
os.environ.pop("RECIPE_CHECKS_CACHE_DIR", None)

import json
import textwrap
from pathlib import Path

import pytest

# pytester runs pytest in this process and afterwards drops the modules the inner run imported.
# Extension modules (numpy, torch) cannot be imported twice in one process, so the heavy stack is
# imported here, once, before any inner run; the engine's caches then also carry across runs.
import bitsandbytes  # noqa: E402,F401
import numpy  # noqa: E402,F401
import peft  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
import transformers.pytorch_utils  # noqa: E402,F401

try:  # the trl extra (DPO recipes): its trainer imports datasets and pyarrow, extension modules too
    import datasets  # noqa: E402,F401
    import trl.trainer.dpo_trainer  # noqa: E402,F401
except ImportError:
    pass

import checks.cli  # noqa: E402,F401
import checks.collect  # noqa: E402,F401
import checks.engine  # noqa: E402,F401
import checks.plugin  # noqa: E402,F401
from checks.rules import all_rules  # noqa: E402

all_rules()

collect_ignore = ["corpus", "hostile", "formats"]

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
CORPUS = Path(__file__).resolve().parent / "corpus"
# A two-layer Llama for recipes that name it as a local config.json (model: {id: tiny-llama, config: ...}): its
# trace and its real steps take a fraction of a second.
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
              "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1024, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}
TINY_LLAMA_RECIPE = """\
model: {id: tiny-llama, config: ./tiny-llama.json}
lora: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}
training:
  per_device_train_batch_size: 1
  learning_rate: 2.0e-4
  bf16: true
  max_seq_length: 128
  gradient_checkpointing: false
hardware: {gpu: rtx4090}
"""

# The slow tier: tests that trace full training steps or run every shipped recipe end to end (seconds
# each, minutes together). A module path marks all its tests; a node id marks one test. Tests may
# also carry @pytest.mark.slow themselves.
SLOW_TESTS = {
    "tests/test_memory_properties.py": "hypothesis over traced training steps",
    "tests/test_memory_replication.py": "full and replicated traces, event for event",
    "tests/test_memory_exactness.py": "fake traces against real CPU executions",
    "tests/test_cli.py::test_check_passes_the_shipped_recipes": "traces every shipped recipe",
    "tests/test_plugin.py::test_shipped_recipes_all_pass_against_their_own_gpus": "traces every shipped recipe",
    "tests/test_plugin.py::test_a_qlora_recipe_failing_rc301_still_gets_its_vram_verdict": "traces a step",
    "tests/test_plugin.py::test_main_job_with_gpu_rtx4090_is_green_and_deselects_the_others": "traces 4 recipes",
    "tests/test_plugin.py::test_xdist_keeps_the_deselection_count_and_the_other_gpus_summary": "starts xdist workers",
    "tests/test_estimate.py::test_a_recipe_that_does_not_fit_exits_1_with_traced_fixes_ranked": "traces six fixes",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: traces training steps or runs every shipped recipe; deselect with -m 'not slow'"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(REPO):
            continue
        module = item.path.relative_to(REPO).as_posix()
        if module in SLOW_TESTS or f"{module}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


GOOD_RECIPE = """\
model: meta-llama/Llama-3.1-8B
quantization:
  load_in_4bit: true
  bnb_4bit_quant_type: nf4
  bnb_4bit_compute_dtype: bfloat16
lora:
  r: 16
  lora_alpha: 32
  target_modules: [q_proj, k_proj, v_proj, o_proj]
training:
  per_device_train_batch_size: 1
  learning_rate: 2.0e-4
  bf16: true
  optim: paged_adamw_8bit
  gradient_checkpointing: true
  max_seq_length: 2048
hardware:
  gpu: rtx4090
"""


@pytest.fixture(autouse=True)
def outside_github_actions(monkeypatch):
    """The suite's own runs of the plugin neither annotate nor write a job summary, even when the suite
    itself runs under GitHub Actions: the tests that test those set the variables themselves."""
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def result_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Opt in to the result cache for one test, in a fresh directory (the suite runs without one): the
    environment names it, so runs the test starts, in this process or another, use it."""
    directory = tmp_path / "result-cache"
    monkeypatch.delenv("RECIPE_CHECKS_NO_CACHE", raising=False)
    monkeypatch.setenv("RECIPE_CHECKS_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def recipe_text() -> str:
    return GOOD_RECIPE


@pytest.fixture
def write(tmp_path: Path):
    """write('name.yaml', text) -> path, with the text dedented."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


def write_hub_cache(cache_dir: Path, repo_id: str, config: dict, revision: str = "main") -> Path:
    """Lay a config.json out the way huggingface_hub caches it: models--org--name/{refs,snapshots}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot / "config.json"
