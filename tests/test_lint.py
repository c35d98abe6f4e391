"""`recipe-checks check` as a linter: exit codes, --select/--ignore, --with-vram, each output format
(SARIF validated against the official 2.1.0 schema), the progress bar, `lint`, `--version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from recipe_checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
from recipe_checks.report import RuleSelection, SelectionError
from recipe_checks.rules import all_rules
from tests.conftest import GOOD_RECIPE, RECIPES, REPO

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
# RC402 (bf16 and fp16, error) and RC406 (fp16 on an overflowing family, warning) on line 14, RC301 on 15
TWO_ERRORS = GOOD_RECIPE.replace("paged_adamw_8bit", "adamw_torch").replace("bf16: true", "bf16: true\n  fp16: true")
WARNING_ONLY = RECIPES / "qwen2.5-1.5b-lora-fp16-rtx4060.yaml"  # RC406 only: a warning
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["check", "--format", "json", *argv])
    return code, json.loads(capsys.readouterr().out)


def _rules(report: dict) -> list[str]:
    return [f["rule"] for f in report["findings"]]


# --- exit codes -------------------------------------------------------------------------------------------

def test_a_clean_recipe_exits_0_and_one_with_errors_exits_1(write, capsys):
    assert main(["check", str(write("good.yaml", GOOD_RECIPE))]) == EXIT_OK
    assert main(["check", str(write("bad.yaml", TWO_ERRORS))]) == EXIT_FINDINGS


def test_warnings_fail_only_with_recipes_strict(capsys):
    code, report = _json(capsys, str(WARNING_ONLY))
    assert (code, _rules(report), report["failed"]) == (EXIT_OK, ["RC406"], False)
    assert main(["check", "--recipes-strict", str(WARNING_ONLY)]) == EXIT_FINDINGS


def test_a_directory_without_a_recipe_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "notes.yaml").write_text("name: not a recipe\n")
    assert main(["check", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"no recipe under {tmp_path}" in err and "top-level 'model' key" in err


def test_a_named_file_that_is_no_recipe_is_a_finding_not_a_usage_error(write, capsys):
    path = write("notes.yaml", "- just\n- a list\n")
    code, report = _json(capsys, str(path))
    assert code == EXIT_FINDINGS and _rules(report) == ["RC101"]


def test_the_same_recipe_named_twice_is_checked_once(write, capsys):
    path = write("bad.yaml", TWO_ERRORS)
    _, report = _json(capsys, str(path), str(path.parent), str(path))
    assert report["recipes"] == [str(path)] and _rules(report) == ["RC402", "RC406", "RC301"]


def test_verbose_and_quiet_together_are_a_usage_error(write, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "-v", "-q", str(write("good.yaml", GOOD_RECIPE))])
    assert exc.value.code == EXIT_USAGE


def test_exit_codes_of_the_console_command(pytester, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TWO_ERRORS)
    (tmp_path / "empty").mkdir()
    command = [sys.executable, "-m", "recipe_checks.cli"]
    missing = pytester.run(*command, "check", str(tmp_path / "nope.yaml"))
    assert missing.ret == EXIT_USAGE
    missing.stderr.fnmatch_lines(["recipe-checks: no such file or directory: *nope.yaml"])
    assert pytester.run(*command, "check", str(tmp_path / "empty")).ret == EXIT_USAGE
    assert pytester.run(*command, "lint", "--select", "RC3O1", str(bad)).ret == EXIT_USAGE
    sarif = tmp_path / "out.sarif"
    found = pytester.run(*command, "lint", str(bad), "--format", "sarif", "-o", str(sarif))
    assert found.ret == EXIT_FINDINGS and "0/1" not in found.stderr.str()  # stderr is no terminal: no bar
    _validate_sarif(json.loads(sarif.read_text()))


def test_a_reader_that_stops_reading_ends_the_run_quietly_with_its_verdict(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TWO_ERRORS)
    command = [sys.executable, "-m", "recipe_checks.cli", "check", str(bad), "--format", "sarif"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    child.stdout.read(10)  # `| head -c 10`: the rest of the report meets a closed pipe
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == EXIT_FINDINGS
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "cannot write" not in stderr


@pytest.mark.parametrize("command", [["gpus"], ["explain", "RC301"], ["models"]])
def test_every_command_ends_quietly_when_its_reader_has_gone(command):
    """`recipe-checks gpus | head -1`: the reader closed the pipe before the command wrote; no traceback."""
    child = subprocess.Popen([sys.executable, "-m", "recipe_checks.cli", *command], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    child.stdout.close()  # before the interpreter has started: every write meets a closed pipe
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


# --- --with-vram --------------------------------------------------------------------------------------

def test_the_linter_runs_the_static_checks_only_by_default(write, capsys):
    _, report = _json(capsys, str(write("good.yaml", GOOD_RECIPE)))
    checks = [c["check"] for c in report["checks"]]
    assert "vram" not in checks and checks[:2] == ["schema", "target-modules"]
    assert report["with_vram"] is False
    assert not {"cpu-step", "cpu-train", "gpu-step", "gpu-train"} & set(checks)


@pytest.mark.slow
def test_with_vram_adds_the_traced_budget(write, capsys):
    path = write("good.yaml", GOOD_RECIPE)
    code, report = _json(capsys, str(path), "--with-vram", "-v")
    vram = [c for c in report["checks"] if c["check"] == "vram"]
    assert code == EXIT_OK and vram == [{"path": str(path), "check": "vram", "name": "vram", "gpu": "rtx4090",
                                         "outcome": "passed", "skipped": None, "waiting": []}]
    assert "RC601" in _rules(report)  # the traced peak, as information (shown with -v)
    _, selected = _json(capsys, str(path), "--with-vram", "--select", "RC3")
    assert "vram" not in [c["check"] for c in selected["checks"]]  # no selected rule reads the trace


# --- --select / --ignore ------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "shown"), [
    ([], ["RC402", "RC406", "RC301"]),
    (["--select", "RC3"], ["RC301"]),
    (["--select", "rc402,RC301"], ["RC402", "RC301"]),
    (["--select", "qlora-paged-optimizer"], ["RC301"]),
    (["--ignore", "RC4"], ["RC301"]),
    (["--select", "RC4", "--ignore", "RC406"], ["RC402"]),
    (["--select", "RC406", "--ignore", "RC4"], ["RC406"]),  # the more specific selector wins
    (["--select", "ALL", "--ignore", "RC301", "--ignore", "RC402"], ["RC406"]),
])
def test_select_and_ignore_choose_the_rules_reported(write, capsys, flags, shown):
    _, report = _json(capsys, str(write("bad.yaml", TWO_ERRORS)), *flags)
    assert _rules(report) == shown


def test_ignoring_the_errors_makes_the_run_pass(write, capsys):
    path = write("bad.yaml", TWO_ERRORS)
    assert main(["check", str(path), "--ignore", "RC402,RC301"]) == EXIT_OK
    assert main(["check", str(path), "--ignore", "RC402,RC301", "--recipes-strict"]) == EXIT_FINDINGS  # RC406


@pytest.mark.parametrize(("selector", "hint"), [("RC3O1", "'RC301'"), ("qlora-paged-optimiser", "'qlora-paged-optimizer'"),
                                                ("zzzz", "")])
def test_an_unknown_rule_is_a_usage_error_with_a_suggestion(write, capsys, selector, hint):
    assert main(["check", str(write("good.yaml", GOOD_RECIPE)), "--ignore", selector]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--ignore {selector}: no rule has this id, name or id prefix" in err
    assert (f"did you mean {hint}" in err) if hint else ("did you mean" not in err)


def test_rule_selection_prefixes_match_ids_by_their_start():
    selection = RuleSelection.parse(["RC2"], ["RC20"], all_rules())
    assert [r.id for r in selection.selected(all_rules())] == [r.id for r in all_rules()
                                                               if r.id.startswith("RC2") and r.id[:4] != "RC20"]
    with pytest.raises(SelectionError):
        RuleSelection.parse(["RC2", "RC999"], [], all_rules())


# --- text ---------------------------------------------------------------------------------------------

def test_text_reads_like_ruff_location_first_then_excerpt_and_help(write, capsys):
    path = write("bad.yaml", TWO_ERRORS)
    assert main(["check", str(path), "--select", "RC301"]) == EXIT_FINDINGS
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        f"{path}:15:10: RC301 QLoRA recipe uses optimizer 'adamw_torch', which is not paged",
        "   |",
        "15 |   optim: adamw_torch",
        "   |          ^^^^^^^^^^^",
    ]
    assert any(line.startswith("help: set training.optim: paged_adamw_8bit") for line in out)
    assert out[-1] == ("1 recipe(s) checked: FAILED (1 error); 4 checks not run; static checks only, "
                       "--with-vram adds the traced VRAM budget")  # --select RC301 leaves 4 checks no rule


def test_quiet_keeps_the_findings_and_drops_the_summary(write, capsys):
    path = write("bad.yaml", TWO_ERRORS)
    assert main(["check", "-q", str(path)]) == EXIT_FINDINGS
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:14:") and "recipe(s) checked" not in out
    assert main(["check", "-q", str(write("good.yaml", GOOD_RECIPE))]) == EXIT_OK
    assert capsys.readouterr().out == ""


def test_gpu_selection_lists_the_recipes_it_did_not_check(write, capsys):
    good = write("good.yaml", GOOD_RECIPE)
    t4 = write("t4.yaml", GOOD_RECIPE.replace("gpu: rtx4090", "gpu: t4"))
    assert main(["check", str(good), str(t4), "--gpu", "rtx4090"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "1 recipe(s) declare other GPUs and were not checked against rtx4090:",
        f"  t4: {t4}  (check with --gpu=t4)",
        "Check every recipe against rtx4090 with --recipes-all-gpus.",
    ]
    assert out[-1].startswith("1 recipe(s) checked, 1 for other GPUs not checked: ok")


# --- json ---------------------------------------------------------------------------------------------

def test_json_keeps_its_keys_and_adds_each_checks_outcome(write, capsys):
    path = write("bad.yaml", TWO_ERRORS)
    code, report = _json(capsys, str(path))
    assert code == EXIT_FINDINGS
    assert {"recipes", "not_checked", "findings", "internal_errors", "failed"} <= set(report)
    assert report["summary"] == {"error": 2, "warning": 1, "info": 0}
    outcomes = {c["check"]: c["outcome"] for c in report["checks"]}
    assert outcomes["precision"] == outcomes["optimizer"] == "failed" and outcomes["schema"] == "passed"
    assert report["findings"][2]["gpu"] == "rtx4090" and report["version"]


# --- github -------------------------------------------------------------------------------------------

def test_github_annotates_each_finding_and_notes_the_recipes_not_checked(write, capsys):
    bad = write("a,b.yaml", TWO_ERRORS)
    t4 = write("t4.yaml", GOOD_RECIPE.replace("gpu: rtx4090", "gpu: t4"))
    assert main(["check", str(bad), str(t4), "--gpu", "rtx4090", "--format", "github"]) == EXIT_FINDINGS
    lines = capsys.readouterr().out.splitlines()
    escaped = str(bad).replace(",", "%2C")
    assert lines[0].startswith(f"::error file={escaped},line=14,col=") and "title=RC402 precision::" in lines[0]
    assert lines[1].startswith(f"::warning file={escaped},line=14,")
    assert lines[3] == (f"::notice file={t4},title=recipe-checks::not checked: declares t4, not rtx4090 "
                        "(use --recipes-all-gpus)")
    assert len(lines) == 4


# --- sarif --------------------------------------------------------------------------------------------

def _validate_sarif(log: dict) -> None:
    import jsonschema

    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(log)


def _sarif(capsys, *argv: str) -> dict:
    main(["check", "--format", "sarif", *argv])
    return json.loads(capsys.readouterr().out)


def test_sarif_is_valid_2_1_0_with_rules_results_and_relative_locations(write, capsys, monkeypatch, tmp_path):
    write("recipes/bad.yaml", TWO_ERRORS)
    monkeypatch.chdir(tmp_path)
    log = _sarif(capsys, "recipes/bad.yaml")
    _validate_sarif(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in all_rules()]
    rc301 = rules[[r["id"] for r in rules].index("RC301")]
    assert rc301["name"] == "qlora-paged-optimizer" and rc301["defaultConfiguration"] == {"level": "error"}
    assert rc301["shortDescription"]["text"].startswith("A recipe that loads the base model in 4 bits")
    assert "## Why it matters" in rc301["help"]["markdown"]
    assert [(r["ruleId"], r["level"]) for r in run["results"]] == [("RC402", "error"), ("RC406", "warning"),
                                                                   ("RC301", "error")]
    result = run["results"][2]
    assert rules[result["ruleIndex"]]["id"] == "RC301"
    assert result["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "recipes/bad.yaml", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 15, "startColumn": 10, "endColumn": 21},
    }
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.resolve().as_uri() + "/"
    assert run["invocations"] == [{"executionSuccessful": True}]


def test_sarif_fingerprints_survive_lines_inserted_above(write, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    write("bad.yaml", TWO_ERRORS)
    before = _sarif(capsys, "bad.yaml")["runs"][0]["results"]
    write("bad.yaml", "# a comment\n# and another\n" + TWO_ERRORS)
    after = _sarif(capsys, "bad.yaml")["runs"][0]["results"]
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in after] == [16, 16, 17]
    assert [r["partialFingerprints"] for r in after] == [r["partialFingerprints"] for r in before]
    assert len({r["partialFingerprints"]["recipeChecks/v1"] for r in after}) == 3


def test_sarif_places_a_whole_file_finding_on_line_1_and_keeps_rule_selection(write, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    write("broken.yaml", "model: [unclosed\n")
    log = _sarif(capsys, "broken.yaml", "--select", "RC1")
    _validate_sarif(log)
    run = log["runs"][0]
    assert {r["id"][:3] for r in run["tool"]["driver"]["rules"]} == {"RC1"}
    assert [r["ruleId"] for r in run["results"]] == ["RC101"]
    assert run["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1


def test_the_sarif_schema_check_catches_a_malformed_log(write, capsys):
    import jsonschema

    log = _sarif(capsys, str(write("bad.yaml", TWO_ERRORS)))
    log["runs"][0]["results"][0]["level"] = "fatal"  # not a SARIF level
    with pytest.raises(jsonschema.ValidationError):
        _validate_sarif(log)


# --- junit --------------------------------------------------------------------------------------------

def test_junit_has_one_testcase_per_recipe_and_check(write, capsys):
    bad = write("dir/bad.yaml", TWO_ERRORS)
    t4 = write("dir/t4.yaml", GOOD_RECIPE.replace("gpu: rtx4090", "gpu: t4"))
    assert main(["check", str(bad), str(t4), "--gpu", "rtx4090", "--format", "junit"]) == EXIT_FINDINGS
    suite = ET.fromstring(capsys.readouterr().out).find("testsuite")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    classname = str(bad).replace("/", ".")
    assert [name for cls, name in cases if cls == classname] == [
        "schema", "target-modules", "quantization", "precision", "optimizer", "throughput"]
    assert cases[(classname, "optimizer")].find("failure").get("message").startswith("RC301 QLoRA recipe uses")
    assert "15 |   optim: adamw_torch" in cases[(classname, "optimizer")].find("failure").text
    assert cases[(classname, "schema")].find("failure") is None
    deselected = cases[(str(t4).replace("/", "."), "gpu-selection")].find("skipped")
    assert deselected.get("message").startswith("not checked: declares t4, not rtx4090")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("7", "2", "0", "1")


def test_junit_stays_well_formed_xml_when_a_finding_quotes_a_control_character(write, capsys):
    path = write("ctl.yaml", GOOD_RECIPE.replace("optim: paged_adamw_8bit", "optim: \"adam\\x01w\""))
    main(["check", str(path), "--format", "junit"])
    out = capsys.readouterr().out
    failure = ET.fromstring(out).find(".//failure")  # ElementTree refuses XML 1.0's forbidden characters
    assert "adam\\x01w" in failure.get("message")  # shown escaped (recipe_checks.shown), as in every format


# --- progress, lint, --version, --help ----------------------------------------------------------------

def _run_with_a_terminal_on_stderr(*argv: str) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal (read as it is written, so the child never blocks)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    primary, replica = pty.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        done = subprocess.run([sys.executable, "-m", "recipe_checks.cli", *argv], stdout=subprocess.PIPE, stderr=replica,
                              env=ENV, cwd=REPO, timeout=600)
    finally:
        os.close(replica)
        reader.join(timeout=10)
        os.close(primary)
    return done.returncode, done.stdout.decode(), b"".join(seen).decode(errors="replace")


def test_a_progress_bar_shows_on_a_terminal_only_and_never_with_quiet(write, tmp_path):
    paths = [str(write(f"r{i}.yaml", GOOD_RECIPE)) for i in range(2)]
    code, out, terminal = _run_with_a_terminal_on_stderr("check", *paths)
    assert code == EXIT_OK and "recipe-checks:   0%" in terminal and "0/2" in terminal  # tqdm's first frame
    assert "0/2" not in out and "2 recipe(s) checked: ok" in out
    code, out, terminal = _run_with_a_terminal_on_stderr("check", "-q", *paths)
    assert (code, out, "0/2" in terminal) == (EXIT_OK, "", False)
    # without a terminal (stderr a pipe): test_exit_codes_of_the_console_command


def test_lint_is_an_alias_of_check(write, capsys):
    path = write("bad.yaml", TWO_ERRORS)
    assert main(["lint", str(path), "--format", "json"]) == EXIT_FINDINGS
    linted = json.loads(capsys.readouterr().out)
    main(["check", str(path), "--format", "json"])
    assert linted["findings"] == json.loads(capsys.readouterr().out)["findings"]


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["check", "--help"], ["lint", "--help"]])
def test_version_and_help_do_not_import_torch(argv):
    code = (
        "import sys\nfrom recipe_checks.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
        "    code = exc.code\nheavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\nsys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0 and "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"recipe-checks {version('recipe-checks')}\n"


# --- internal errors, the report file -------------------------------------------------------------------

def test_a_crashing_rule_fails_the_run_in_every_format_and_says_so(write, capsys, monkeypatch, tmp_path):
    from recipe_checks.rules.rc301_qlora_paged_optimizer import QloraPagedOptimizer

    def crash(self, ctx):
        raise RuntimeError("a bug in a rule")

    monkeypatch.setattr(QloraPagedOptimizer, "run", crash)
    monkeypatch.chdir(tmp_path)
    write("good.yaml", GOOD_RECIPE)
    code, report = _json(capsys, "good.yaml")
    assert code == EXIT_FINDINGS
    assert report["internal_errors"] == [{"path": "good.yaml", "check": "optimizer",
                                          "error": "RuntimeError: a bug in a rule"}]
    assert main(["check", "good.yaml"]) == EXIT_FINDINGS
    captured = capsys.readouterr()
    assert "good.yaml: internal error in check 'optimizer': RuntimeError: a bug in a rule" in captured.err
    assert "FAILED (1 internal error(s), see stderr)" in captured.out
    log = _sarif(capsys, "good.yaml")
    _validate_sarif(log)
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is False
    main(["check", "good.yaml", "--format", "junit"])
    suite = ET.fromstring(capsys.readouterr().out).find("testsuite")
    assert suite.get("errors") == "1" and suite.find("testcase[@name='optimizer']/error") is not None
    main(["check", "good.yaml", "--format", "github"])
    assert "title=recipe-checks internal error::good.yaml::optimizer: RuntimeError" in capsys.readouterr().out


def test_the_report_goes_to_the_output_file_and_an_unwritable_one_is_a_usage_error(write, capsys, tmp_path):
    path = write("bad.yaml", TWO_ERRORS)
    target = tmp_path / "report.json"
    assert main(["check", str(path), "--format", "json", "-o", str(target)]) == EXIT_FINDINGS
    assert capsys.readouterr().out == "" and _rules(json.loads(target.read_text())) == ["RC402", "RC406", "RC301"]
    assert main(["check", str(path), "-o", str(tmp_path / "no" / "such" / "dir" / "r.txt")]) == EXIT_USAGE
    assert "cannot write the report to" in capsys.readouterr().err


# --- checks that did not run: said in every format ----------------------------------------------------

NO_GPU = GOOD_RECIPE.replace("hardware:\n  gpu: rtx4090\n", "")
NO_GPU_REASON = "names no target GPU; set hardware.gpu in the recipe or pass --gpu=NAME"


def test_every_format_says_which_checks_did_not_run_and_why(write, capsys, monkeypatch, tmp_path):
    path = write("nogpu.yaml", NO_GPU)
    assert main(["check", str(path)]) == EXIT_OK  # not a failure: nothing was found; but not silent either
    out = capsys.readouterr().out
    assert f"not run: precision, optimizer, throughput of {path}: not checked: {path} {NO_GPU_REASON}" in out
    assert out.rstrip().splitlines()[-1].startswith("1 recipe(s) checked: ok; 3 checks not run;")

    code, report = _json(capsys, str(path))
    outcomes = {c["check"]: (c["outcome"], c["skipped"]) for c in report["checks"]}
    assert {check for check, (outcome, _) in outcomes.items() if outcome == "passed"} == {
        "schema", "target-modules", "quantization"}
    assert outcomes["precision"] == ("skipped", f"not checked: {path} {NO_GPU_REASON}")
    assert report["checks_not_run"] == 3

    assert main(["check", str(path), "--format", "github"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"::notice file={path},title=recipe-checks%3A not run::precision, optimizer, throughput: not checked: {path} "
        f"{NO_GPU_REASON}"]

    monkeypatch.chdir(tmp_path)
    log = _sarif(capsys, str(path))
    _validate_sarif(log)
    notes = [n["message"]["text"] for n in log["runs"][0]["invocations"][0]["toolExecutionNotifications"]]
    assert notes == [f"{path}::{check}: not checked: {path} {NO_GPU_REASON}" for check in
                     ("precision", "optimizer", "throughput")]

    main(["check", str(path), "--format", "junit"])
    suite = ET.fromstring(capsys.readouterr().out).find("testsuite")
    skipped = {c.get("name"): c.find("skipped").get("message") for c in suite.iter("testcase")
               if c.find("skipped") is not None}
    assert skipped == {check: f"not checked: {path} {NO_GPU_REASON}" for check in ("precision", "optimizer", "throughput")}


def test_a_check_whose_rules_select_leaves_out_is_not_run_not_passed(write, capsys):
    path = write("good.yaml", GOOD_RECIPE)
    code, report = _json(capsys, str(path), "--select", "RC301")
    assert code == EXIT_OK
    outcomes = {c["check"]: c["outcome"] for c in report["checks"]}
    assert outcomes == {"schema": "passed", "target-modules": "skipped", "quantization": "skipped",
                        "precision": "skipped", "optimizer": "passed", "throughput": "skipped"}
    assert main(["check", str(path), "--select", "RC301"]) == EXIT_OK
    assert (f"not run: target-modules, quantization, precision, throughput of {path}: --select/--ignore leave out "
            "each of its rules") in capsys.readouterr().out


def test_empty_and_binary_yaml_files_a_search_finds_are_said_to_be_skipped(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(GOOD_RECIPE)
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# a recipe, one day\n")
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (tmp_path / "workflow.yaml").write_text("jobs:\n  test: {runs-on: ubuntu-latest}\n")  # another tool's YAML
    assert main(["check", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{tmp_path / 'empty.yaml'}: skipped: an empty file" in out
    assert f"{tmp_path / 'comments.yaml'}: skipped: comments only" in out
    assert f"{tmp_path / 'binary.yaml'}: skipped: cannot be read: it is not UTF-8 text" in out
    assert "workflow.yaml" not in out
    assert "1 recipe(s) checked: ok; 3 YAML files skipped, not recipes;" in out
    code, report = _json(capsys, str(tmp_path))
    assert [(Path(f["path"]).name, f["reason"]) for f in report["not_recipes"]][:2] == [
        ("binary.yaml", "cannot be read: it is not UTF-8 text: byte 0x89 at offset 0 cannot be decoded"),
        ("comments.yaml", "comments only")]
    (tmp_path / "r.yaml").unlink()
    assert main(["check", str(tmp_path)]) == EXIT_USAGE  # nothing to check: said with what was found
    assert f"({tmp_path / 'binary.yaml'}: cannot be read" in capsys.readouterr().err


def test_a_check_whose_model_rules_waited_is_partly_run_not_simply_passed(write, capsys):
    """A model whose config is not here (RC106, a warning) leaves the target-module rules waiting while another rule
    of the check ran: the check did not fail, but it did not wholly pass either; every format says which waited."""
    path = write("r.yaml", GOOD_RECIPE.replace("meta-llama/Llama-3.1-8B", "someorg/unknown-model-7b"))
    assert main(["check", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"partly run: {path}::target-modules: RC201, RC202" in out
    assert "checks partly run" in out.splitlines()[-1]
    code, report = _json(capsys, str(path))
    waiting = {c["check"]: c["waiting"] for c in report["checks"]}
    assert waiting["target-modules"] and "the model could not be built" in waiting["target-modules"][0]
    assert report["checks_partly_run"] >= 1
