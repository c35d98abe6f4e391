"""The broken-recipe corpus: each file fails through pytest with exactly the rule ids it declares.

Each file in tests/corpus starts with `# expect: RC201 ...`: every rule id it must produce, errors
and warnings alike (the run uses --recipes-strict so warnings are rendered as failures too).
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.conftest import CORPUS

FINDING_LINE = re.compile(r"^(RC\d{3})(?: \(warning\))? (?!\(info\))", re.MULTILINE)  # errors and warnings
CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))


def expected_ids(path) -> set[str]:
    match = re.search(r"^# expect: (.*)$", path.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' line"
    return set(match.group(1).split())


def test_the_corpus_has_at_least_30_broken_recipes():
    assert len(CORPUS_FILES) >= 30


def _checks(rule_ids: set[str]) -> set[str]:
    """The checks the rules report under (RC712 is a cpu-step rule, RC711 a cpu-train one)."""
    from recipe_checks.rules import rule_by_id

    return {rule.check for rule in map(rule_by_id, rule_ids) if rule is not None}


def _case(path):
    # a corpus file about the traced vram check or the training run takes seconds: the slow tier
    slow = bool(_checks(expected_ids(path)) & {"vram", "cpu-train"})
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("path", [_case(p) for p in CORPUS_FILES])
def test_broken_recipe_fails_with_its_expected_rules(pytester, path):
    shutil.copy(path, pytester.path / path.name)
    expected = expected_ids(path)
    # the traced and the real checks take seconds a recipe: run each where the corpus file is about it
    left_out = [check for check in ("vram", "cpu-step", "cpu-train") if check not in _checks(expected)]
    select = ["-k", " and ".join(f"not {check}" for check in left_out)] if left_out else []
    result = pytester.runpytest(path.name, "--recipes-strict", "-p", "no:cacheprovider", *select)
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    assert set(FINDING_LINE.findall(output)) == expected, output
