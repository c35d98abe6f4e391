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

import recipe_checks.cli  # noqa: E402,F401
import recipe_checks.collect  # noqa: E402,F401
import recipe_checks.engine  # noqa: E402,F401
import recipe_checks.plugin  # noqa: E402,F401
from recipe_checks.rules import all_rules  # noqa: E402

all_rules()

collect_ignore = ["corpus", "hostile", "formats", "public_configs"]

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
    "tests/test_public_configs.py::test_every_error_on_a_public_config_is_recorded_as_true_with_its_reason_and_none_is_internal":
        "checks the 285 public example configs",
}

# The tests that check the shipped recipes, each asserting its own things of the same traces and real steps
# (the end-to-end run, the main job, `check --with-vram`, the pinned peaks, the quoted adapter sizes, and two
# recipes against other GPUs, with their fixes). They share one result cache for the session (each trace and
# real step of a shipped recipe runs once, not once a test), and under xdist they run first, one after the
# other on one worker (`pytest_xdist_make_scheduler`): tests running at once on two workers would each
# compute what the other is computing.
SHIPPED_RECIPE_TESTS = {
    "tests/test_cli.py::test_check_passes_the_shipped_recipes",
    "tests/test_distributed.py::test_the_multi_gpu_recipes_per_rank_verdicts",
    "tests/test_estimate.py::test_shipped_recipes_trace_the_peaks_pinned_for_these_library_versions",
    "tests/test_estimate.py::test_the_adapter_parameters_a_recipe_comment_quotes_are_the_traced_ones",
    "tests/test_flux.py::test_the_published_bf16_lora_does_not_fit_an_rtx4090_and_its_traced_fix_is_qlora",
    "tests/test_plugin.py::test_shipped_recipes_all_pass_against_their_own_gpus",
    "tests/test_plugin.py::test_main_job_with_gpu_rtx4090_is_green_and_deselects_the_others",
}


@pytest.hookimpl(trylast=True)  # after xdist's, which registers its controller (dsession) under -n
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: traces training steps or runs every shipped recipe; deselect with -m 'not slow'"
    )
    if not config.pluginmanager.has_plugin("dsession"):  # an xdist controller runs no test: its workers import
        _import_the_heavy_stack()


def _import_the_heavy_stack() -> None:
    """pytester runs pytest in this process and afterwards drops the modules the inner run imported.
    Extension modules (numpy, torch) cannot be imported twice in one process, so the heavy stack is
    imported here, once, before any inner run; the engine's caches then also carry across runs."""
    import bitsandbytes  # noqa: F401
    import numpy  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.pytorch_utils  # noqa: F401

    try:  # the trl extra (DPO recipes): its trainer imports datasets and pyarrow, extension modules too
        import datasets  # noqa: F401
        import trl.trainer.dpo_trainer  # noqa: F401
    except ImportError:
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(REPO):
            continue
        module = item.path.relative_to(REPO).as_posix()
        if module in SLOW_TESTS or f"{module}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):  # an xdist worker: the order it reports is the order tests are handed out
        # the slow tier first, so that the last tests of the run, the one a worker may wait for alone, are short
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `-n N` (xdist's default `--dist load`): SHIPPED_RECIPE_TESTS are one unit of work, handed out
    first (xdist's scope scheduling hands the largest units out first), and every other test is a unit of its
    own, handed out in the workers' order (the slow tier first) as a worker runs out of work. An explicit
    `--dist` other than load is left to xdist."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ShippedRecipeTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "shipped-recipe-tests" if nodeid in SHIPPED_RECIPE_TESTS else nodeid

    return ShippedRecipeTestsTogether(config, log)


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


@pytest.fixture(scope="session")
def session_result_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A result cache for the whole session: under xdist, in the controller's temporary folder, which holds
    every worker's, so that all of them share it; a new one each session, so that the suite starts cold.
    RECIPE_CHECKS_TEST_SHARED_CACHE names another (`.ci/run` passes the main job's, made afresh, which then
    answers from what these tests computed)."""
    if os.environ.get("RECIPE_CHECKS_TEST_SHARED_CACHE"):
        return Path(os.environ["RECIPE_CHECKS_TEST_SHARED_CACHE"])
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "shared-result-cache"


@pytest.fixture(autouse=True)
def shipped_recipe_tests_share_a_result_cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """SHIPPED_RECIPE_TESTS opt in to the session's result cache (as `result_cache_dir` does to a test's own)."""
    if request.node.nodeid in SHIPPED_RECIPE_TESTS:
        monkeypatch.delenv("RECIPE_CHECKS_NO_CACHE", raising=False)
        monkeypatch.setenv("RECIPE_CHECKS_CACHE_DIR", str(request.getfixturevalue("session_result_cache_dir")))


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
