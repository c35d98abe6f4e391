"""The regression gate (`--recipes-baseline=REF|FILE.json`, RC603): a recipe whose traced peak rose by more
than the threshold, that stopped fitting, or whose throughput ceiling fell, against a git REF or a file
of `recipe-checks estimate --json` output. The recipes train a two-layer Llama from a local config.json, so
a trace (and RC601's traced fixes, when a recipe does not fit) takes a fraction of a second."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA
from tests.conftest import TINY_LLAMA_RECIPE as RECIPE

from recipe_checks.baseline import BaselineError, load_file

VRAM_ONLY = ("-k", "vram", "-p", "no:cacheprovider")


@pytest.fixture(scope="module", autouse=True)
def inner_runs_share_imports(tmp_path_factory):
    """One run of the plugin before pytester's: each pytester run drops the modules it imported (pytest's
    plugins, the model code, the tracer and its cache) and the next imports them again, about 7 s a run
    on this machine under load; imported by a run outside pytester, they stay (2 s a run)."""
    folder = tmp_path_factory.mktemp("warm")
    (folder / "r.yaml").write_text(RECIPE)
    (folder / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA))
    assert pytest.main([str(folder / "r.yaml"), "-k", "vram", "-q", "-p", "no:cacheprovider"]) == pytest.ExitCode.OK


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "commit.gpgsign=false", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(pytester: pytest.Pytester) -> Path:
    """The pytester directory as a git repository holding r.yaml and its model's config, committed."""
    git(pytester.path, "init", "-q", "-b", "main")
    (pytester.path / "r.yaml").write_text(RECIPE)
    (pytester.path / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA))
    git(pytester.path, "add", "r.yaml", "tiny-llama.json")
    git(pytester.path, "commit", "-q", "-m", "recipe")
    return pytester.path


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / "r.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def rc603_lines(result) -> list[str]:
    return [line for line in result.outlines if line.startswith("RC603")]


def test_a_larger_batch_fails_when_its_traced_peak_rises_beyond_the_threshold(pytester, repo):
    edit(repo, "per_device_train_batch_size: 1", "per_device_train_batch_size: 64")
    result = pytester.runpytest("r.yaml", "--recipes-baseline=main", *VRAM_ONLY)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (line,) = rc603_lines(result)
    assert line.startswith("RC603 traced peak ") and "in main:r.yaml (+" in line
    assert line.endswith("rose by more than the 5% threshold")
    relaxed = pytester.runpytest("r.yaml", "--recipes-baseline=main", "--recipes-baseline-threshold=10000%", *VRAM_ONLY)
    assert relaxed.ret == pytest.ExitCode.USAGE_ERROR  # above 1000 percent: a readable usage error
    relaxed.stderr.fnmatch_lines(["*10000%: give 0 to 1000 percent*"])
    relaxed = pytester.runpytest("r.yaml", "--recipes-baseline=main", "--recipes-baseline-threshold=1000", *VRAM_ONLY)
    assert relaxed.ret == pytest.ExitCode.OK, relaxed.stdout.str()


def test_a_recipe_that_stops_fitting_its_budget_fails(pytester, repo):
    edit(repo, "hardware: {gpu: rtx4090}", "hardware: {gpu: rtx4090, vram_budget_gib: 0.5}")  # below the CUDA context
    result = pytester.runpytest("r.yaml", "--recipes-baseline=main", *VRAM_ONLY)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([("RC603 no longer fits the 0.5 GiB budget on rtx4090: traced peak * (+0.0%); "
                                 "it fitted 22.8 GiB before")])


def test_gradient_checkpointing_fails_on_the_fallen_throughput_ceiling(pytester, repo):
    edit(repo, "gradient_checkpointing: false", "gradient_checkpointing: true")
    result = pytester.runpytest("r.yaml", "--recipes-baseline=main", *VRAM_ONLY)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (line,) = rc603_lines(result)  # the peak fell: the ceiling alone fails
    assert line.startswith("RC603 throughput ceiling fell to ") and "threshold 5%" in line


def test_without_a_baseline_or_a_change_the_gate_passes(pytester, repo):
    plain = pytester.runpytest("r.yaml", *VRAM_ONLY, "-rA")
    assert plain.ret == pytest.ExitCode.OK and "RC603" not in plain.stdout.str()
    unchanged = pytester.runpytest("r.yaml", "--recipes-baseline=main", *VRAM_ONLY, "-rA")
    assert unchanged.ret == pytest.ExitCode.OK
    unchanged.stdout.fnmatch_lines(["*RC603 (info) no regression check: r.yaml is unchanged since main*"])
    (repo / "new.yaml").write_text(RECIPE)
    new = pytester.runpytest("new.yaml", "--recipes-baseline=main", *VRAM_ONLY, "-rA")
    new.stdout.fnmatch_lines(["*RC603 (info) no regression check: new.yaml is new since main: nothing to compare with*"])


def test_a_ref_that_does_not_exist_is_a_usage_error(pytester, repo):
    result = pytester.runpytest("r.yaml", "--recipes-baseline=nope", *VRAM_ONLY)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--recipes-baseline: 'nope' is not a commit of the repository at *"])


def _estimate_json(path: str, capsys) -> str:
    from recipe_checks.cli import main

    assert main(["estimate", path, "--json", "--no-fixes"]) == 0
    return capsys.readouterr().out


def test_a_baseline_file_written_by_estimate_json_gates_as_a_ref_does(pytester, repo, capsys):
    (repo / "other.yaml").write_text(RECIPE.replace("r: 8", "r: 4"))
    # two `estimate --json` outputs back to back: what a shell loop over the recipes writes
    (repo / "base.json").write_text(_estimate_json("r.yaml", capsys) + _estimate_json("other.yaml", capsys))
    edit(repo, "per_device_train_batch_size: 1", "per_device_train_batch_size: 64")
    result = pytester.runpytest("r.yaml", "other.yaml", "--recipes-baseline=base.json", *VRAM_ONLY, "-rA")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["RC603 traced peak * in base.json (+*): rose by more than the 5% threshold",
                                 "*RC603 (info) no regression: traced peak * in base.json (+0.0%)*"],
                                consecutive=False)


def test_a_baseline_file_may_be_a_list_or_a_mapping_by_path_and_a_broken_one_is_a_usage_error(pytester, tmp_path):
    entry = {"gpu": "rtx4090", "peak_bytes": 100, "budget_bytes": 200, "fits": True, "ceiling_tokens_per_second": 5.0}
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{**entry, "recipe": "a.yaml"}, {"error": "could not trace b.yaml"}]))
    as_map = tmp_path / "map.json"
    as_map.write_text(json.dumps({"a.yaml": entry}))
    for path in (as_list, as_map):
        ((key, gpu), figures), = load_file(path).items()
        assert key == (tmp_path / "a.yaml").resolve().as_posix() and gpu == "rtx4090"
        assert (figures.peak_bytes, figures.fits, figures.tokens_per_second) == (100, True, 5.0)
    broken = tmp_path / "broken.json"
    broken.write_text('{"recipe": "a.yaml",\n "gpu": }')
    with pytest.raises(BaselineError, match=r"broken.json:2:9: not JSON"):
        load_file(broken)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**entry, "recipe": "a.yaml", "peak_bytes": None}))
    with pytest.raises(BaselineError, match="estimate #1 lacks a readable"):
        load_file(missing)
    (pytester.path / "r.yaml").write_text(RECIPE)
    (pytester.path / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA))
    result = pytester.runpytest("r.yaml", f"--recipes-baseline={broken}", *VRAM_ONLY)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--recipes-baseline: *broken.json:2:9: not JSON*"])


def test_the_cli_gates_on_a_baseline_ref_and_refuses_a_missing_one(repo, capsys):
    from recipe_checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main

    recipe = str(repo / "r.yaml")
    assert main(["check", recipe, "--recipes-baseline", "HEAD", "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["with_vram"] is True  # the gate traces: no --with-vram needed
    edit(repo, "per_device_train_batch_size: 1", "per_device_train_batch_size: 64")
    assert main(["check", recipe, "--recipes-baseline", "HEAD", "--format", "json"]) == EXIT_FINDINGS
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert "RC603" in {f["rule"] for f in findings}
    assert main(["check", recipe, "--recipes-baseline", "nope"]) == EXIT_USAGE
    assert "nope" in capsys.readouterr().err


_ENTRY = {"recipe": "a.yaml", "gpu": "rtx4090", "peak_bytes": 100, "budget_bytes": 200, "fits": True}


def _raw(**changes: str) -> str:
    """An estimate object as JSON text with some values written raw (JSON that json.dumps would not write)."""
    text = json.dumps({key: (f"@{key}@" if key in changes else value) for key, value in _ENTRY.items()})
    for key, raw in changes.items():
        text = text.replace(f'"@{key}@"', raw)
    return text


# (what the file holds, what the message must say: the key that is wrong and why)
HOSTILE_BASELINES = {
    "deep-nesting": ("[" * 100_000 + "]" * 100_000, r"nests arrays or objects too deeply"),
    "infinity": (_raw(peak_bytes="Infinity"), r"peak_bytes: Infinity \(not a JSON number\) is not a whole number"),
    "nan-ceiling": (_raw(fits="true, \"ceiling_tokens_per_second\": NaN"),
                    r"ceiling_tokens_per_second: NaN \(not a JSON number\) is not a finite number"),
    "1e400": (_raw(budget_bytes="1e400"), r"budget_bytes: 1e400 \(beyond the largest float\) is not a whole number"),
    "5000-digit-integer": (_raw(peak_bytes="9" * 5000), r"peak_bytes: a 5,000-digit number is not a whole number"),
    "nul-in-recipe": (json.dumps({**_ENTRY, "recipe": "a\0.yaml"}), r"recipe: the path holds a NUL character"),
    "5000-character-recipe-path": (json.dumps({**_ENTRY, "recipe": "a" * 4995 + ".yaml"}),
                                   r"recipe: a path of 5,000 characters that cannot name a file here"),
    "fits-as-a-string": (json.dumps({**_ENTRY, "fits": "false"}),
                         r'fits: the string "false" is not true or false \(write the JSON literal, without quotes\)'),
    "bytes-as-a-boolean": (json.dumps({**_ENTRY, "peak_bytes": True}), r"peak_bytes: true is not a whole number of bytes"),
    "negative-bytes": (json.dumps({**_ENTRY, "budget_bytes": -1}), r"budget_bytes: -1 is not a byte count from 0"),
    "gpu-as-a-number": (json.dumps({**_ENTRY, "gpu": 4090}), r'gpu: 4090 is not a GPU key such as "rtx4090"'),
    "not-an-object": (json.dumps({"a.yaml": 5}), r"estimate #1 is 5, not an estimate object \(recipe a.yaml\)"),
}


@pytest.mark.parametrize("name", list(HOSTILE_BASELINES))
def test_a_hostile_baseline_file_is_a_usage_error_naming_the_file_the_value_and_the_fix(name, tmp_path, capsys,
                                                                                       monkeypatch):
    """Each of these was a traceback (exit 1), or read "false" as true; now exit 2 and one message saying which
    file, which estimate and key, why the value is unusable and how to write the file."""
    from recipe_checks.cli import EXIT_USAGE, main

    text, says = HOSTILE_BASELINES[name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "base.json").write_text(text)
    assert main(["check", "r.yaml", "--recipes-baseline", "base.json", "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("recipe-checks: base.json") and "Traceback" not in err, err
    assert re.search(says, err), err
    assert "recipe-checks estimate RECIPE --json" in err and "\0" not in err and err.count("\n") == 1
    with pytest.raises(BaselineError, match=says):  # the plugin's path: the same error, a pytest usage error
        load_file(tmp_path / "base.json")


def test_a_baseline_spec_of_5000_characters_is_a_usage_error(tmp_path, capsys, monkeypatch):
    from recipe_checks.cli import EXIT_USAGE, main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE)
    for spec in ("a" * 5000, "a" * 5000 + ".json"):  # as a REF (no repository here), as a file name
        assert main(["check", "r.yaml", "--recipes-baseline", spec, "-q"]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("recipe-checks: ") and "Traceback" not in err and len(err) < 600, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_a_fifo_named_as_a_baseline_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def load() -> None:
        try:
            outcome.append(load_file(fifo))
        except BaseException as exc:  # noqa: BLE001 (the assertion below shows what it was)
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # it blocked in open() waiting for a writer: let it go before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("reading a FIFO named as the baseline file blocked the run")
    (error,) = outcome
    assert isinstance(error, BaselineError), error
    assert str(error).startswith("baseline '") and "x.json' is a FIFO (named pipe), not a regular file" in str(error)


def test_a_file_named_like_the_baseline_branch_is_refused_naming_both_and_each_can_be_named(repo, capsys, monkeypatch):
    """A file `main` in the working directory no longer silently wins over the branch main: the run says both
    exist and how to name each; `./main` is the file, `main^{commit}` the branch."""
    from recipe_checks.cli import EXIT_OK, EXIT_USAGE, main

    monkeypatch.chdir(repo)
    (repo / "main").write_text(_estimate_json("r.yaml", capsys))
    assert main(["check", "r.yaml", "--recipes-baseline", "main", "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"recipe-checks: 'main' names both the baseline file {repo / 'main'} and the ref "
                          f"refs/heads/main of the repository at {repo.resolve()}"), err
    assert "write ./main to compare with the file, or main^{commit} to compare with the commit" in err
    assert main(["check", "r.yaml", "--recipes-baseline", "./main", "-v", "--format", "json"]) == EXIT_OK
    assert [f["message"] for f in json.loads(capsys.readouterr().out)["findings"] if f["rule"] == "RC603"] == [
        "no regression: traced peak 0.80 GiB on rtx4090, 0.80 GiB in ./main (+0.0%)"]
    assert main(["check", "r.yaml", "--recipes-baseline", "main^{commit}", "-v", "--format", "json"]) == EXIT_OK
    assert [f["message"] for f in json.loads(capsys.readouterr().out)["findings"] if f["rule"] == "RC603"] == [
        "no regression check: r.yaml is unchanged since main^{commit}"]
