"""GitHub Actions output from pytest runs: annotations within GitHub's per-step limits, and the job
summary table, under a simulated GITHUB_ACTIONS environment (in process and with pytest-xdist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recipe_checks.annotate import RunRecord, annotation_lines, item_payload
from recipe_checks.engine import CheckResult
from recipe_checks.findings import Finding, Location, Severity

SMALL = """\
model: HuggingFaceTB/SmolLM2-135M
lora: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}
training: {per_device_train_batch_size: 1, learning_rate: 2.0e-4, bf16: true, max_seq_length: 128}
hardware: {gpu: rtx4090}
"""
BAD_TARGET = SMALL.replace("[q_proj, v_proj]", "[query_key_value]")
TYPO = SMALL.replace("learning_rate:", "learning_rte:")  # RC102, in the schema check


@pytest.fixture(autouse=True)
def not_in_github_actions(monkeypatch):
    """Every test starts outside GitHub Actions (this suite may itself run there) and turns it on itself."""
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def github(monkeypatch, tmp_path) -> Path:
    """A simulated GitHub Actions step: GITHUB_ACTIONS=true and a step summary file; returns its path."""
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return summary


def finding(rule: str, line: int, severity: Severity = Severity.ERROR, path: str = "r.yaml") -> Finding:
    return Finding(rule, f"message of {rule} at {line}", Location(path, line, 3), severity=severity, check="schema",
                   help="fix it")


def test_annotations_stop_at_ten_errors_and_ten_warnings_and_say_what_was_left_out():
    findings = [finding("RC102", n) for n in range(1, 14)] + [finding("RC406", n, Severity.WARNING) for n in range(1, 12)]
    lines = annotation_lines(findings + [finding("RC102", 1)])  # the same finding twice (two GPUs): once
    assert sum(line.startswith("::error ") for line in lines) == 10
    assert sum(line.startswith("::warning ") for line in lines) == 10
    assert lines[0] == "::error file=r.yaml,line=1,col=3,title=RC102 schema::message of RC102 at 1 -- help: fix it"
    assert lines[-1].startswith("::notice title=recipe-checks::3 error(s) and 1 warning(s) not annotated: "
                                "GitHub shows 10 errors and 10 warnings per step")


def test_few_findings_are_all_annotated_errors_first_and_information_never():
    lines = annotation_lines([finding("RC406", 1, Severity.WARNING), finding("RC201", 9),
                              finding("RC601", 2, Severity.INFO)])
    assert [line.split(" ")[0] for line in lines] == ["::error", "::warning"]


def test_the_vram_figures_are_read_from_rc601_whether_it_fits_or_not():
    result = CheckResult(check="vram", gpu="t4", findings=[
        Finding("RC601", "peak 30.2 GiB does not fit the 14.2 GiB budget (t4 memory) on t4", Location("r.yaml", 5, 1))])
    payload = item_payload("r.yaml", "vram", "t4", result)
    assert payload["vram"] == {"peak_gib": 30.2, "budget_gib": 14.2, "fits": False}
    assert [f["rule"] for f in payload["findings"]] == ["RC601"]


def test_the_summary_escapes_table_cells_and_lists_the_findings():
    run = RunRecord()
    bad = finding("RC201", 4, path="a|b.yaml")
    run.add("a|b.yaml::target-modules", "call", "failed",
            {"path": "a|b.yaml", "check": "target-modules", "gpu": None, "findings": [bad.to_dict()], "vram": None})
    text = run.summary(unchanged=["c.yaml"], ref="main", annotated=1)
    assert "| `a\\|b.yaml` | ❌ RC201 | – |" in text
    assert "1 recipe(s) unchanged since main, not checked." in text
    assert "- ❌ `a\\|b.yaml:4:3` **RC201** message of RC201 at 4 — help: fix it" in text


def _expected_vram_cell(path: Path) -> str:
    """The peak and budget as RC601 states them for this recipe, traced here (the trace is cached)."""
    from recipe_checks.context import RecipeState
    from recipe_checks.engine import run_check
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    catalog = GpuCatalog.load(())
    state = RecipeState.from_file(path, path.name, Options(), catalog)
    (info,) = run_check(state, "vram", "rtx4090").infos
    peak, budget = re.search(r"peak ([\d.]+) GiB of the ([\d.]+) GiB budget", info.message).groups()
    return f"{peak} / {budget} GiB (rtx4090)"


def test_under_github_actions_pytest_annotates_the_findings_and_writes_the_job_summary(pytester, github):
    pytester.makefile(".yaml", good=SMALL, bad=BAD_TARGET)
    result = pytester.runpytest("good.yaml", "bad.yaml", "-k", "not cpu and not gpu", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        ("::error file=bad.yaml,line=2,col=*,title=RC201 target-modules::target module 'query_key_value' matches "
        "nothing in LlamaForCausalLM -- help: *")])
    summary = github.read_text(encoding="utf-8")
    vram = _expected_vram_cell(pytester.path / "good.yaml")
    assert "| recipe | schema | target-modules | quantization | precision | optimizer | throughput | vram | traced peak / budget |" in summary
    assert f"| `good.yaml` | ✅ | ✅ | ✅ | ✅ | ✅ | ✅ | ✅ | {vram} |" in summary
    assert re.search(r"\| `bad.yaml` \| ✅ \| ❌ RC201 \|.*\| – \|", summary), summary
    # markdown's characters behind a backslash: it renders as query_key_value, and no key starts emphasis
    assert "**RC201** target module 'query\\_key\\_value' matches nothing" in summary


def test_outside_github_actions_nothing_is_annotated_unless_asked(pytester, tmp_path, monkeypatch):
    pytester.makefile(".yaml", bad=BAD_TARGET)
    plain = pytester.runpytest("bad.yaml", "-k", "target", "-p", "no:cacheprovider")
    assert "::error" not in plain.stdout.str()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    asked = pytester.runpytest("bad.yaml", "-k", "target", "--recipes-annotate", "-p", "no:cacheprovider")
    asked.stdout.fnmatch_lines(["::error file=bad.yaml,line=2,*title=RC201 target-modules::*"])
    assert "| `bad.yaml` | ❌ RC201 |" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_a_run_with_more_findings_than_github_shows_annotates_ten_and_says_so(pytester, github):
    for n in range(12):
        pytester.makefile(".yaml", **{f"typo{n:02}": TYPO})
    result = pytester.runpytest(".", "-k", "schema", "-p", "no:cacheprovider")
    errors = [line for line in result.outlines if line.startswith("::error ")]
    assert len(errors) == 10 and all("title=RC102 schema" in line for line in errors)
    result.stdout.fnmatch_lines(["::notice title=recipe-checks::2 error(s) not annotated: *"])
    summary = github.read_text(encoding="utf-8")
    assert "### Findings (12; 10 annotated on the files)" in summary
    assert summary.count("**RC102**") == 12


@pytest.mark.slow  # starts two worker processes that import torch: tens of seconds on a shared 2-core machine
def test_under_xdist_the_controller_annotates_and_summarises_what_the_workers_found(pytester, github):
    pytest.importorskip("xdist")
    from tests.test_changed import git

    pytester.makefile(".yaml", good=SMALL)
    git(pytester.path, "init", "-q")
    git(pytester.path, "add", "good.yaml")
    git(pytester.path, "commit", "-q", "-m", "good")
    pytester.makefile(".yaml", bad=BAD_TARGET, typo=TYPO)  # untracked: changed since HEAD
    result = pytester.runpytest("-n", "2", ".", "-k", "schema or target", "--recipes-changed-since=HEAD",
                                "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["1 recipe(s) unchanged since HEAD, not checked"])
    errors = sorted(line.split("::")[1] for line in result.outlines if line.startswith("::error "))
    assert errors == ["error file=bad.yaml,line=2,col=47,title=RC201 target-modules",
                      "error file=typo.yaml,line=3,col=44,title=RC102 schema"]
    summary = github.read_text(encoding="utf-8")
    assert "| recipe | schema | target-modules | traced peak / budget |" in summary
    assert "1 recipe(s) unchanged since HEAD, not checked." in summary and "`good.yaml`" not in summary
    assert "| `bad.yaml` | ✅ | ❌ RC201 | – |" in summary
    assert "| `typo.yaml` | ❌ RC102 |" in summary


# A conftest for pytester runs: the target-modules check of crash.yaml ends its worker process, as a segfault in
# a native library (torch, bitsandbytes) would, before the worker reports the check's outcome.
_CRASHING_CONFTEST = """\
import os

import recipe_checks.collect

_run_check = recipe_checks.collect.run_check


def _crashing_run_check(state, check, gpu):
    if check == "target-modules" and state.path == "crash.yaml":
        os._exit(3)
    return _run_check(state, check, gpu)


recipe_checks.collect.run_check = _crashing_run_check
"""


@pytest.mark.slow  # starts worker processes that import the checks: seconds on a shared 2-core machine
def test_under_xdist_a_check_whose_worker_crashed_is_summarised_as_failed_never_passed(pytester, github):
    pytest.importorskip("xdist")
    pytester.makeconftest(_CRASHING_CONFTEST)
    pytester.makefile(".yaml", good=SMALL, crash=SMALL)
    result = pytester.runpytest("-n", "2", "-p", "xdist", ".", "-k", "schema or target", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running 'crash.yaml::target-modules'*"])
    summary = github.read_text(encoding="utf-8")
    assert "| `good.yaml` | ✅ | ✅ | – |" in summary
    assert "| `crash.yaml` | ✅ | 💥 crashed | – |" in summary, summary
    assert "1 crashed" in summary and "3 passed" in summary
    assert ("- 💥 `crash.yaml::target-modules`: its pytest-xdist worker crashed while running it; the check has no "
            "verdict") in summary


def _crash_report(nodeid: str) -> pytest.TestReport:
    """The report pytest-xdist's controller makes for an item whose worker died (xdist.dsession.handle_crashitem)."""
    path = nodeid.split("::")[0]
    return pytest.TestReport(nodeid=nodeid, location=(path, None, path), keywords={}, outcome="failed",
                             longrepr=f"worker 'gw0' crashed while running {nodeid!r}", when="???")


def test_a_check_whose_worker_died_before_it_reported_anything_is_summarised_as_crashed():
    run = RunRecord()
    run.pytest_runtest_logreport(_crash_report("recipes/a.yaml::vram[t4]"))  # died in setup: no payload came
    run.pytest_runtest_logreport(_crash_report("tests/test_host.py::test_memory"))  # the host's: not ours
    assert list(run.items) == ["recipes/a.yaml::vram[t4]"]
    record = run.items["recipes/a.yaml::vram[t4]"]
    assert (record.path, record.check, record.gpu, record.outcome) == ("recipes/a.yaml", "vram", "t4", "crashed")
    text = run.summary()
    assert "1 recipe(s), 1 check(s): 1 crashed." in text
    assert "| `recipes/a.yaml` | 💥 crashed | – |" in text
