"""Text from a recipe is shown escaped in every output: control characters, line separators and lone
surrogates in keys, values and paths never reach a terminal, a CI log or the job summary raw (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe_checks.findings import Finding, Location
from recipe_checks.shown import shown
from tests.conftest import GOOD_RECIPE

REPO = Path(__file__).resolve().parent.parent
INJECTING_KEY = r'"evil\n::error file=x::INJECTED\r::stop-commands::tok\e[2J"'
SURROGATE_KEY = r'"bad\ud800key"'
MARKDOWN_KEY = r'"x\r\n## All recipes passed\n![pwned](https://example.invalid/a.png) [link](https://example.invalid)"'


def with_key(key: str) -> str:
    return GOOD_RECIPE.replace("training:\n", f"training:\n  {key}: 1\n")


def test_shown_escapes_controls_separators_and_surrogates_and_keeps_newlines_only_when_asked():
    assert shown("a\nb\r\x1b[2J\u2028\ud800\x00\t\x85") == "a\\nb\\r\\x1b[2J\\u2028\\ud800\\x00\\t\\x85"
    assert shown("why\nnext", newlines=True) == "why\nnext"
    assert shown("plain text: ünïcode, 4090") == "plain text: ünïcode, 4090"


def test_a_finding_and_its_location_hold_only_printable_text():
    finding = Finding("RC102", "unknown key 'a\nb'", Location("x\n::add-mask::RC\udcff.yaml", 1, 1), key="k\x1b",
                      help="line one\nline two\r", details=("d\n",))
    assert "\n" not in finding.message + finding.location.path + finding.key + "".join(finding.details)
    assert finding.help == "line one\nline two\\r"
    json.dumps(finding.to_dict(), ensure_ascii=False).encode("utf-8")  # no lone surrogate left to fail encoding


FORMATS = ["text", "github", "sarif", "json", "junit"]

# One process for the five formats (each a process of its own cost 13 s of imports): each report is written
# through a UTF-8 text stream, as a terminal or a CI log takes it, where a lone surrogate raises.
_EACH_FORMAT = """\
import contextlib, sys
from recipe_checks.cli import main

folder, out = sys.argv[1], sys.argv[2]
for fmt in sys.argv[3:]:
    with open(f"{out}/{fmt}.out", "w", encoding="utf-8", newline="") as stream, contextlib.redirect_stdout(stream):
        code = main(["check", folder, "--format", fmt])
    print(fmt, code)
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[int, str]]:
    folder = tmp_path_factory.mktemp("recipes")
    (folder / "a-evil.yaml").write_text(with_key(INJECTING_KEY), encoding="utf-8")
    (folder / "b-surrogate.yaml").write_text(with_key(SURROGATE_KEY), encoding="utf-8")
    (folder / "c-good.yaml").write_text(GOOD_RECIPE, encoding="utf-8")
    out = tmp_path_factory.mktemp("reports")
    done = subprocess.run([sys.executable, "-c", _EACH_FORMAT, str(folder), str(out), *FORMATS], capture_output=True,
                          cwd=REPO, env={**os.environ, "PYTHONIOENCODING": "utf-8", "GITHUB_ACTIONS": "true"},
                          timeout=300)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0 and "Traceback" not in stderr, stderr
    codes = dict(line.split() for line in done.stdout.decode().splitlines())
    return {fmt: (int(codes[fmt]), (out / f"{fmt}.out").read_text(encoding="utf-8")) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_key_injects_a_workflow_command_or_crashes_the_report_of_the_other_recipes(reports, fmt):
    code, out = reports[fmt]
    assert code == 1
    for line in out.splitlines():
        assert not line.lstrip().startswith(("::stop-commands", "::error file=x")), line
        assert "\x1b" not in line and "\r" not in line
    assert "RC102" in out and "evil" in out and "ud800key" in out  # both findings, escaped
    if fmt == "json":  # the good recipe is in the report too, not lost with the others
        assert [Path(p).name for p in json.loads(out)["recipes"]] == ["a-evil.yaml", "b-surrogate.yaml", "c-good.yaml"]


def test_the_plugin_under_github_actions_prints_no_injected_command_and_an_escaped_summary(pytester, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makefile(".yaml", evil=with_key(INJECTING_KEY), md=with_key(MARKDOWN_KEY), sur=with_key(SURROGATE_KEY))
    result = pytester.runpytest(".", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    for line in result.outlines:
        assert not line.lstrip().startswith(("::stop-commands", "::error file=x")), line
    assert sum(line.startswith("::error ") for line in result.outlines) == 3  # recipe-checks' own annotations
    text = summary.read_text(encoding="utf-8")
    assert "\n## All recipes passed" not in text and "![pwned]" not in text and "[link](" not in text


def test_the_quoted_source_line_is_shown_escaped_too():
    from recipe_checks.render import render_finding

    text = render_finding(Finding("RC102", "m", Location("a.yaml", 1, 3, 5)), "  k\x1b[2J: \r1")
    assert "1 |   k\\x1b[2J: \\r1" in text and "\x1b" not in text and "\r" not in text
