"""Changed-only runs (`--recipes-changed-since=REF`): git decides what changed, in a temporary repository."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from recipe_checks.changed import ChangedSinceError, changes_since
from recipe_checks.options import add_ci_options
from tests.conftest import GOOD_RECIPE

OTHER_RECIPE = GOOD_RECIPE.replace("r: 16", "r: 8")


@pytest.fixture(autouse=True)
def not_in_github_actions(monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)  # this suite may run there: no summary of the inner runs


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "commit.gpgsign=false", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose first commit holds three recipes, a pyproject.toml and a .gitignore."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "recipes").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "recipes" / f"{name}.yaml").write_text(GOOD_RECIPE)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / ".gitignore").write_text("scratch/\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "recipes")
    return tmp_path


def names(changes, repo: Path) -> set[str]:
    return {p.relative_to(repo.resolve()).as_posix() for p in changes.changed}


def test_a_modified_an_untracked_and_a_staged_recipe_are_changed_and_the_others_not(repo):
    (repo / "recipes" / "a.yaml").write_text(OTHER_RECIPE)  # modified, not staged
    (repo / "recipes" / "new.yaml").write_text(GOOD_RECIPE)  # untracked
    (repo / "recipes" / "b.yaml").write_text(OTHER_RECIPE)
    git(repo, "add", "recipes/b.yaml")  # staged
    (repo / "scratch").mkdir()
    (repo / "scratch" / "ignored.yaml").write_text(GOOD_RECIPE)  # ignored by .gitignore
    changes = changes_since("HEAD", repo / "recipes")
    assert names(changes, repo) == {"recipes/a.yaml", "recipes/b.yaml", "recipes/new.yaml"}
    assert changes.everything is None
    assert changes.selects(repo / "recipes" / "a.yaml") and not changes.selects(repo / "recipes" / "c.yaml")


def test_a_renamed_recipe_counts_under_its_new_name_and_a_deleted_one_is_not_checked(repo):
    git(repo, "mv", "recipes/a.yaml", "recipes/renamed.yaml")
    (repo / "recipes" / "b.yaml").unlink()
    git(repo, "commit", "-q", "-am", "rename and delete")
    changes = changes_since("HEAD~1", repo)
    assert names(changes, repo) == {"recipes/renamed.yaml"}


def test_commits_since_the_ref_count_as_well_as_the_working_tree(repo):
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "recipes" / "c.yaml").write_text(OTHER_RECIPE)
    git(repo, "commit", "-q", "-am", "change c")
    assert names(changes_since("main", repo), repo) == {"recipes/c.yaml"}
    assert names(changes_since("feature", repo), repo) == set()


@pytest.mark.parametrize("deciding", ["pyproject.toml", "recipes/conftest.py", "tox.ini"])
def test_a_change_to_the_settings_or_a_conftest_checks_every_recipe(repo, deciding):
    (repo / deciding).write_text("# changed\n")
    changes = changes_since("HEAD", repo)
    assert changes.everything == f"{deciding} changed since HEAD"
    assert changes.selects(repo / "recipes" / "c.yaml")


def test_a_change_to_a_gpu_profiles_file_checks_every_recipe(repo):
    profiles = repo / "gpus.yaml"
    profiles.write_text("gpus: {}\n")
    assert changes_since("HEAD", repo).everything is None  # not named as deciding: an ordinary file
    assert changes_since("HEAD", repo, [profiles]).everything == "gpus.yaml changed since HEAD"
    assert changes_since("HEAD", str(repo), [str(profiles)]).everything  # the command line's strings too


def test_a_ref_that_does_not_exist_is_an_error_saying_how_to_fix_it(repo):
    with pytest.raises(ChangedSinceError, match=r"'origin/nope' is not a commit of the repository at .*fetch-depth: 0"):
        changes_since("origin/nope", repo)
    with pytest.raises(ChangedSinceError, match="is not a commit"):
        changes_since("--output=/tmp/x", repo)  # never read as an option by git


def test_a_path_outside_a_git_repository_is_an_error(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ChangedSinceError, match="is not inside a git repository"):
        changes_since("HEAD", tmp_path / "plain")


def test_the_cli_spelling_changed_since_sets_the_same_option():
    parser = argparse.ArgumentParser()
    add_ci_options(parser.add_argument, cli=True)
    assert parser.parse_args(["--changed-since", "main"]).recipes_changed_since == "main"
    assert parser.parse_args(["--recipes-changed-since=main"]).recipes_changed_since == "main"
    plugin_side = argparse.ArgumentParser()
    add_ci_options(plugin_side.add_argument)
    with pytest.raises(SystemExit):  # pytest gets the prefixed flag only: one option group, one prefix
        plugin_side.parse_args(["--changed-since", "main"])


@pytest.fixture
def pytester_repo(pytester: pytest.Pytester) -> Path:
    """The pytester directory as a git repository with two committed recipes."""
    git(pytester.path, "init", "-q", "-b", "main")
    (pytester.path / "recipes").mkdir()
    for name in ("a", "b"):
        (pytester.path / "recipes" / f"{name}.yaml").write_text(GOOD_RECIPE)
    git(pytester.path, "add", ".")
    git(pytester.path, "commit", "-q", "-m", "recipes")
    return pytester.path


def test_pytest_checks_only_the_changed_recipe_and_says_how_many_it_left_out(pytester, pytester_repo):
    (pytester_repo / "recipes" / "b.yaml").write_text(OTHER_RECIPE)
    result = pytester.runpytest("recipes/", "--recipes-changed-since=HEAD", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=result.parseoutcomes()["deselected"])
    result.stdout.fnmatch_lines([
        "recipes/b.yaml .*",
        "*recipe-checks: changed-only run*",
        "1 recipe(s) unchanged since HEAD, not checked",
    ])
    assert "recipes/a.yaml" not in result.stdout.str()
    everything = pytester.runpytest("recipes/", "-k", "schema", "-p", "no:cacheprovider")
    everything.assert_outcomes(passed=2, deselected=everything.parseoutcomes()["deselected"])


def test_a_changed_conftest_checks_every_recipe(pytester, pytester_repo):
    pytester.makeconftest("")
    result = pytester.runpytest("recipes/", "--recipes-changed-since=HEAD", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, deselected=result.parseoutcomes()["deselected"])
    result.stdout.fnmatch_lines(["every recipe checked: conftest.py changed since HEAD"])


def test_no_changed_recipe_is_a_green_run_not_an_empty_one(pytester, pytester_repo, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest("recipes/", "--recipes-changed-since=HEAD", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["2 recipe(s) unchanged since HEAD, not checked"])
    assert "2 recipe(s) unchanged since HEAD, not checked." in summary.read_text(encoding="utf-8")


def test_an_unknown_ref_is_a_usage_error_of_pytest(pytester, pytester_repo):
    result = pytester.runpytest("recipes/", "--recipes-changed-since=nope", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--recipes-changed-since: 'nope' is not a commit of the repository at *"])


def test_the_cli_checks_only_the_changed_recipe_and_says_how_many_it_left_out(repo, capsys):
    from recipe_checks.cli import EXIT_OK, EXIT_USAGE, main

    (repo / "recipes" / "b.yaml").write_text(OTHER_RECIPE)
    assert main(["check", str(repo / "recipes"), "--changed-since", "HEAD", "--format", "json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in report["recipes"]] == ["b.yaml"]
    assert sorted(Path(p).name for p in report["unchanged"]) == ["a.yaml", "c.yaml"]
    assert main(["check", str(repo / "recipes"), "--changed-since", "HEAD"]) == EXIT_OK
    assert "2 recipe(s) unchanged since HEAD, not checked" in capsys.readouterr().out
    (repo / "pyproject.toml").write_text("# changed\n")
    assert main(["check", str(repo / "recipes"), "--changed-since", "HEAD"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "every recipe checked: pyproject.toml changed since HEAD" in out and "3 recipe(s) checked" in out
    assert main(["check", str(repo / "recipes"), "--changed-since", "nope"]) == EXIT_USAGE
    assert "'nope' is not a commit" in capsys.readouterr().err


# --- a recipe is checked when a file it reads changed ------------------------------------------------------

SHARDED = """\
model: HuggingFaceTB/SmolLM2-135M
lora: {{r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}}
training:
  per_device_train_batch_size: 2
  learning_rate: 2.0e-4
  bf16: true
  max_seq_length: 1024
distributed:
  {key}: {file}
hardware: {{gpu: h100-sxm}}
"""
ZERO2 = json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
                    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"})
ZERO0_FP16 = json.dumps({"zero_optimization": {"stage": 0}, "fp16": {"enabled": True},
                         "train_micro_batch_size_per_gpu": 7, "gradient_accumulation_steps": "auto"})
ACCELERATE = "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: ds/z.json\n"
SMOL = json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256})
AXOLOTL = """\
base_model: meta-llama/Meta-Llama-3-8B
adapter: lora
lora_r: 8
lora_alpha: 16
lora_target_linear: true
sequence_len: 1024
micro_batch_size: 1
gradient_accumulation_steps: 1
learning_rate: 0.0002
optimizer: adamw_torch
bf16: true
deepspeed: deepspeed_configs/zero2.json
"""

# name -> (files of the first commit, the file the change touches, its new text; None: removed)
READS = {
    "deepspeed": ({"recipes/r.yaml": SHARDED.format(key="deepspeed", file="ds.json"), "recipes/ds.json": ZERO2},
                  "recipes/ds.json", ZERO0_FP16),
    "deepspeed-removed": ({"recipes/r.yaml": SHARDED.format(key="deepspeed", file="ds.json"),
                           "recipes/ds.json": ZERO2}, "recipes/ds.json", None),
    "accelerate": ({"recipes/r.yaml": SHARDED.format(key="accelerate_config", file="acc.yaml"),
                    "recipes/acc.yaml": ACCELERATE, "recipes/ds/z.json": ZERO2}, "recipes/acc.yaml",
                   ACCELERATE.replace("num_processes: 2", "num_processes: 4")),
    "accelerate-deepspeed-file": ({"recipes/r.yaml": SHARDED.format(key="accelerate_config", file="acc.yaml"),
                                   "recipes/acc.yaml": ACCELERATE, "recipes/ds/z.json": ZERO2},
                                  "recipes/ds/z.json", ZERO0_FP16),
    "model-config": ({"recipes/r.yaml": GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B",
                                                            "model: {id: tiny, config: configs/tiny.json}"),
                      "recipes/configs/tiny.json": SMOL}, "recipes/configs/tiny.json", SMOL.replace("64", "96")),
    "local-model-folder": ({"recipes/r.yaml": GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B", "model: ./tiny"),
                            "recipes/tiny/config.json": SMOL}, "recipes/tiny/config.json", SMOL.replace("64", "96")),
    "axolotl-deepspeed": ({"recipes/r.yml": AXOLOTL, "recipes/deepspeed_configs/zero2.json": ZERO2},
                          "recipes/deepspeed_configs/zero2.json", ZERO0_FP16),
}


def _commit_files(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "a recipe and what it reads")


def _touch(repo: Path, name: str, text: str | None) -> None:
    if text is None:
        (repo / name).unlink()
    else:
        (repo / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("case", READS)
def test_the_cli_checks_a_recipe_when_only_a_file_it_reads_changed(repo, capsys, case):
    from recipe_checks.cli import main

    files, touched, text = READS[case]
    _commit_files(repo, files)
    _touch(repo, touched, text)
    recipe = next(name for name in files if name.endswith((".yaml", ".yml")) and name.split("/")[-1].startswith("r."))
    main(["check", str(repo / "recipes"), "--changed-since", "HEAD", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in report["recipes"]] == [Path(recipe).name], report["unchanged"]
    assert sorted(Path(p).name for p in report["unchanged"]) == ["a.yaml", "b.yaml", "c.yaml"]
    inputs = next(iter(report["inputs"].values()))  # the result names what the recipe read
    assert any(Path(p).resolve() == (repo / touched).resolve() or (repo / touched).resolve().is_relative_to(
        Path(p).resolve()) for p in inputs), inputs


def test_the_full_deepspeed_story_of_the_issue_is_caught_by_the_changed_only_gate(pytester, pytester_repo):
    """A pull request changes only the DeepSpeed config a recipe names (ZeRO-0, fp16, micro-batch 7): the
    changed-only run checks that recipe and finds what a full run finds."""
    _commit_files(pytester_repo, {"recipes/r.yaml": SHARDED.format(key="deepspeed", file="ds.json"),
                                  "recipes/ds.json": ZERO2})
    _touch(pytester_repo, "recipes/ds.json", ZERO0_FP16)
    changed = pytester.runpytest("recipes/", "--recipes-changed-since=HEAD", "-p", "no:cacheprovider",
                                 "-k", "schema or distributed or precision")
    full = pytester.runpytest("recipes/r.yaml", "-p", "no:cacheprovider", "-k", "schema or distributed or precision")
    assert changed.ret == full.ret == pytest.ExitCode.TESTS_FAILED
    failed = [line for line in changed.outlines if line.startswith("FAILED")]
    assert failed and failed == [line for line in full.outlines if line.startswith("FAILED")]
    changed.stdout.fnmatch_lines(["2 recipe(s) unchanged since HEAD, not checked"])
