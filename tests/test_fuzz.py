"""Fuzzing the shipped recipes: mutated types, keys and values always end in findings, never a crash.

Each example takes a recipe from recipes/, applies a few mutations (a value replaced by another type
or an extreme one, a key deleted, renamed or added, a value wrapped in lists) and checks the result
with the engine. An internal error (CheckResult.error) or an exception fails the example.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))

EXTREMES = [
    float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -1, 0, 1, 2**31, 2**63, 2**70, -2**63,
    True, False, None, "", " ", "x" * 300, "x" * 5000, "1e-4", "true", "nan", "../../../etc", "/dev/zero",
    "https://huggingface.co/meta-llama/Llama-3.1-8B", "~nobody/model", "(a+)+$", "[", "(q|q_)*proj", ".*",
    "all-linear", "rtx4099", "\u202e\ufeff", [], [[]], [[[1]]], [None, 1.5, "a"], list(range(2000)),
    {}, {"a": {"b": [1, {}]}}, {"(.*)*": 8}, {"q_proj": float("inf")},
]
NEW_KEYS = ["rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "exclude_modules",
            "target_parameters", "use_dora", "trust_remote_code", "config", "gpu", "optim", "seed", "1", "true",
            "lora_alfa", "x-anchor", "<<", "k" * 300]


def _containers(node, path=()):
    """Every mapping and list in the recipe, with its path."""
    if isinstance(node, (dict, list)):
        yield path, node
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            yield from _containers(value, (*path, key))


@functools.cache
def _parsed(source: Path):
    """A shipped recipe as YAML data, read once: each example mutates a deep copy."""
    return yaml.safe_load(source.read_text(encoding="utf-8"))


@st.composite
def mutated_recipes(draw) -> str:
    source = draw(st.sampled_from(RECIPES))
    data = copy.deepcopy(_parsed(source))
    for _ in range(draw(st.integers(1, 4))):
        _, container = draw(st.sampled_from(list(_containers(data))))
        keys = list(container.keys()) if isinstance(container, dict) else list(range(len(container)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "rename", "add", "wrap"]))
        if op == "add" or not keys:
            if isinstance(container, dict):
                container[draw(st.sampled_from(NEW_KEYS))] = copy.deepcopy(draw(st.sampled_from(EXTREMES)))
            else:
                container.append(copy.deepcopy(draw(st.sampled_from(EXTREMES))))
            continue
        key = draw(st.sampled_from(keys))
        if op == "replace":
            container[key] = copy.deepcopy(draw(st.sampled_from(EXTREMES)))
        elif op == "delete":
            del container[key]
        elif op == "rename" and isinstance(container, dict):
            container[draw(st.sampled_from([f"{key}_", str(key).upper(), str(key)[:-1] or "k", 1, True]))] = container.pop(key)
        elif op == "wrap":
            container[key] = [[container[key]]]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def check_text(text: str, traced: bool = False, run: bool = False):
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.yaml"
        path.write_text(text, encoding="utf-8")
        _, results = check_recipe(path, Options(), GpuCatalog.load(()), traced=traced, run=run)
    errors = [f"{r.check}: {type(r.error).__name__}: {r.error}" for r in results if r.error is not None]
    assert errors == [], f"internal errors for\n{text}\n{errors}"
    return results


_SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@given(mutated_recipes())
@settings(max_examples=100, **_SETTINGS)
def test_mutated_shipped_recipes_give_findings_never_internal_errors(text):
    check_text(text)


@pytest.mark.slow
@given(mutated_recipes())
@settings(max_examples=1000, **_SETTINGS)
def test_a_thousand_mutated_recipes_give_findings_never_internal_errors(text):
    check_text(text)


@pytest.mark.slow
@given(mutated_recipes())
@settings(max_examples=5, **_SETTINGS)
def test_mutated_recipes_traced_give_findings_never_internal_errors(text):
    check_text(text, traced=True)


@pytest.mark.slow
@given(mutated_recipes())
@settings(max_examples=4, **_SETTINGS)
def test_mutated_recipes_run_for_real_give_findings_never_internal_errors(text):
    check_text(text, run=True)


def test_the_mutations_reach_the_checks():
    """A mutation that the loader or schema refuses still produces findings, so the fuzz test
    exercises the rules and not only the file reader."""
    text = (RECIPES[0]).read_text(encoding="utf-8").replace("r: ", "r: .inf #", 1)
    results = check_text(text)
    assert "RC103" in {f.rule_id for r in results for f in r.findings}
