"""Benchmark: the static checks of 100 recipes (all five checks, every target GPU), libraries imported.

Run:  pytest bench/ --benchmark-only
The figures are written in the README (static checks: the traced vram check is benchmarked apart). Each
round starts with cold model caches, so the meta-device builds of the ten model families are included,
as in a fresh pytest session; a second benchmark runs the same in a fresh process, imports included,
and reports that process's own peak RSS.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from recipe_checks.engine import check_recipe
from recipe_checks.gpus import GpuCatalog
from recipe_checks.models import skeleton
from recipe_checks.options import Options

MODELS = [
    ("meta-llama/Llama-3.1-8B", "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"),
    ("meta-llama/Llama-3.2-1B", "all-linear"),
    ("mistralai/Mistral-7B-v0.1", "[q_proj, k_proj, v_proj, o_proj]"),
    ("Qwen/Qwen2.5-1.5B", "all-linear"),
    ("Qwen/Qwen2.5-7B", "[q_proj, v_proj]"),
    ("Qwen/Qwen3-8B", "all-linear"),
    ("google/gemma-2-9b", "[q_proj, k_proj, v_proj, o_proj]"),
    ("microsoft/Phi-3-mini-4k-instruct", "[qkv_proj, o_proj, gate_up_proj, down_proj]"),
    ("HuggingFaceTB/SmolLM2-1.7B", "all-linear"),
    ("meta-llama/Llama-3.1-70B", "[q_proj, k_proj, v_proj, o_proj]"),
]
GPUS = ["rtx4090", "a100-80gb", "[rtx3090, l40s]", "h100"]

TEMPLATE = """\
model: {model}
quantization:
  load_in_4bit: {qlora}
  bnb_4bit_quant_type: nf4
  bnb_4bit_compute_dtype: bfloat16
lora:
  r: {r}
  lora_alpha: {alpha}
  target_modules: {targets}
training:
  per_device_train_batch_size: {batch}
  bf16: true
  optim: paged_adamw_8bit
  gradient_checkpointing: true
  max_seq_length: 2048
hardware:
  gpu: {gpu}
"""


@pytest.fixture(scope="module")
def hundred_recipes(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("recipes")
    combos = itertools.islice(itertools.cycle(itertools.product(MODELS, GPUS, (8, 16, 64))), 100)
    paths = []
    for i, ((model, targets), gpu, r) in enumerate(combos):
        path = root / f"recipe-{i:03d}.yaml"
        path.write_text(TEMPLATE.format(model=model, targets=targets, gpu=gpu, r=r, alpha=2 * r,
                                        qlora=str(i % 2 == 0).lower(), batch=1 + i % 4))
        paths.append(path)
    return paths


def _cold_caches():
    skeleton._build_cached.cache_clear()


def _check_all(paths: list[Path]) -> tuple[int, int]:
    """(recipes whose every static check ran to a verdict with the model built, recipes that failed)."""
    catalog = GpuCatalog.load()
    options = Options()
    complete = failed = 0
    for path in paths:
        _, results = check_recipe(path, options, catalog, traced=False)
        failed += any(r.failed() or r.error for r in results)
        ran = all(r.skipped is None and r.error is None for r in results)
        counted = any(f.rule_id == "RC208" for r in results for f in r.findings)  # the meta model was built
        complete += ran and counted
    return complete, failed


def test_static_checks_of_100_recipes(benchmark, hundred_recipes):
    complete, failed = benchmark.pedantic(lambda: _check_all(hundred_recipes), setup=_cold_caches,
                                          rounds=3, iterations=1)
    assert complete == len(hundred_recipes) == 100  # every check of every recipe ran: nothing skipped
    assert failed == 0  # the generated recipes are valid: the benchmark measures the passing path


FRESH_PROCESS = """\
import sys
from pathlib import Path
from bench.test_static_checks import _check_all
print(*_check_all(sorted(Path(sys.argv[1]).glob("*.yaml"))))
"""


def test_static_checks_of_100_recipes_in_a_fresh_process(benchmark, fresh_process, report_figure, hundred_recipes):
    run = benchmark.pedantic(lambda: fresh_process(["-c", FRESH_PROCESS, str(hundred_recipes[0].parent)]),
                             rounds=1, iterations=1)
    assert run.returncode == 0
    assert run.stdout.split() == ["100", "0"]  # 100 recipes checked to a verdict, none failed
    benchmark.extra_info["max_rss_bytes"] = run.max_rss_bytes
    report_figure(f"static checks of 100 recipes: fresh process, max RSS {run.max_rss_bytes / 2**30:.2f} GiB")
