"""The rule registry: unique ids, documented in ruff's layout, and every rule exercised by the corpus."""

from __future__ import annotations

import re

from checks.rules import CHECKS, all_rules
from checks.rules.rc303_bnb_optimizer_gpu import BNB_OPTIMIZERS
from checks.rules.rc302_unknown_optimizer import optimizer_names
from tests.conftest import CORPUS


def test_rule_ids_and_names_are_unique():
    rules = all_rules()
    assert len({r.id for r in rules}) == len(rules)
    assert len({r.name for r in rules}) == len(rules)


def test_each_rule_lives_in_its_own_module_named_after_its_id():
    for rule in all_rules():
        assert rule.__module__.rsplit(".", 1)[-1].startswith(rule.id.lower() + "_")
        assert rule.check in CHECKS


def test_each_rule_is_documented_in_four_sections():
    for rule in all_rules():
        doc = rule.doc()
        for heading in ("## What it checks", "## Why it matters", "## Example", "## Use instead"):
            assert heading in doc, f"{rule.id} lacks {heading}"
        assert rule.why


def test_every_rule_but_the_informational_one_has_a_broken_recipe_in_the_corpus():
    expected: set[str] = set()
    for path in CORPUS.glob("*.yaml"):
        match = re.search(r"^# expect: (.*)$", path.read_text(), re.MULTILINE)
        if match:
            expected.update(match.group(1).split())
    missing = {r.id for r in all_rules() if r.severity.value != "info"} - expected
    assert not missing, f"rules without a corpus recipe: {sorted(missing)}"


def test_bitsandbytes_optimizers_are_real_transformers_names():
    assert BNB_OPTIMIZERS <= set(optimizer_names())
