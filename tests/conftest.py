"""Fixtures for recipe-checks' own tests.

tests/corpus holds broken recipes on purpose: they are checked through pytester in test_corpus.py,
never collected as part of this suite.
"""

from __future__ import annotations

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

import checks.cli  # noqa: E402,F401
import checks.collect  # noqa: E402,F401
import checks.engine  # noqa: E402,F401
import checks.plugin  # noqa: E402,F401
from checks.rules import all_rules  # noqa: E402

all_rules()

collect_ignore = ["corpus"]

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
CORPUS = Path(__file__).resolve().parent / "corpus"

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
