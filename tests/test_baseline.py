"""The regression gate (`--recipes-baseline=REF|FILE.json`, RC603): a recipe whose traced peak rose by more
than the threshold, that stopped fitting, or whose throughput ceiling fell, against a git REF or a file
of `recipe-checks estimate --json` output. The recipes train a two-layer Llama from a local config.json, so
a trace (and RC601's traced fixes, when a recipe does not fit) takes a fraction of a second."""

from __future__ import annotations

import json
import subprocess
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
