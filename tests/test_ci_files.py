"""The CI files we ship: the GitHub Actions workflow, the pre-commit hook and its example config load,
have the keys GitHub and pre-commit require, pin every action by commit, and name real options."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from recipe_checks.options import add_ci_options, add_options
from tests.conftest import REPO

WORKFLOW = REPO / "ci" / "github-actions.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
PRE_COMMIT_CONFIG = REPO / "ci" / "pre-commit-config.yaml"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def workflow_problems(workflow: object) -> list[str]:
    """What GitHub would refuse in a workflow: no trigger, no jobs, a job without runs-on or steps,
    a step with neither (or both of) `uses` and `run`."""
    if not isinstance(workflow, dict):
        return ["the workflow is not a mapping"]
    problems = []
    if "on" not in workflow and True not in workflow:  # YAML 1.1 reads a bare `on` as true
        problems.append("no `on` trigger")
    jobs = workflow.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return problems + ["no jobs"]
    for name, job in jobs.items():
        if not isinstance(job, dict):
            problems.append(f"job {name} is not a mapping")
            continue
        if not isinstance(job.get("runs-on"), (str, list)) or not job.get("runs-on"):
            problems.append(f"job {name} has no runs-on")
        steps = job.get("steps")
        if not isinstance(steps, list) or not steps:
            problems.append(f"job {name} has no steps")
            continue
        for number, step in enumerate(steps, 1):
            if not isinstance(step, dict) or ("uses" in step) == ("run" in step):
                problems.append(f"job {name} step {number} needs exactly one of uses and run")
    return problems


def load(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def steps(workflow: dict, kind: str) -> list:
    return [step[kind] for job in workflow["jobs"].values() for step in job["steps"] if kind in step]


def test_the_workflow_has_the_structure_github_requires():
    assert workflow_problems(load(WORKFLOW)) == []


def test_the_structural_check_finds_a_job_without_runs_on_and_a_step_without_uses_or_run():
    broken = load(WORKFLOW)
    del broken["jobs"]["cpu"]["runs-on"]
    broken["jobs"]["gpu"]["steps"].append({"name": "nothing to do"})
    assert workflow_problems(broken) == ["job cpu has no runs-on", "job gpu step 6 needs exactly one of uses and run"]


def test_the_workflow_runs_on_pull_requests_that_touch_recipes_or_the_settings():
    workflow = load(WORKFLOW)
    paths = workflow[True]["pull_request"]["paths"]
    assert "recipes/**" in paths and {"pyproject.toml", "pytest.ini", "**/conftest.py"} <= set(paths)


def test_every_action_is_pinned_by_a_full_commit_sha_with_its_tag_in_a_comment():
    uses = steps(load(WORKFLOW), "uses")
    assert {u.split("@")[0] for u in uses} == {"actions/checkout", "actions/setup-python", "actions/upload-artifact",
                                               "actions/cache"}
    assert all(PINNED.match(u) for u in uses), uses
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40}\s+#\s*v\d+\.\d+\.\d+$", line), line


def _declared_flags() -> set[str]:
    flags: set[str] = {"-m", "-n", "-p", "--junitxml", "--recipes-annotate"}  # pytest's, xdist's, the plugin's own

    def record(*names, **_):
        flags.update(names)

    add_options(record)
    add_ci_options(record)
    return flags


def _pytest_commands(workflow: dict) -> dict[str, list[str]]:
    commands = {}
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" in step and step["run"].lstrip().startswith("pytest"):
                commands[name] = shlex.split(step["run"])
    return commands


def test_the_pytest_commands_use_only_options_that_exist():
    flags = _declared_flags()
    for job, argv in _pytest_commands(load(WORKFLOW)).items():
        used = {arg.split("=")[0] for arg in argv if arg.startswith("-")}
        assert used <= flags, f"{job}: unknown {used - flags}"


def test_the_cpu_job_checks_changed_recipes_without_the_slow_and_gpu_checks_and_gates_regressions():
    workflow = load(WORKFLOW)
    argv = _pytest_commands(workflow)["cpu"]
    assert argv[:2] == ["pytest", "recipes/"] and "not slow" in argv
    assert "--recipes-changed-since=$BASE_REF" in argv and "--recipes-baseline=$BASE_REF" in argv
    assert workflow["env"]["BASE_REF"] == "origin/${{ github.base_ref }}"
    checkout = workflow["jobs"]["cpu"]["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0  # the base branch must be there to compare with
    install = next(run for run in steps({"jobs": {"cpu": workflow["jobs"]["cpu"]}}, "run") if "pip install" in run)
    lines = install.splitlines()
    assert "torch==" in lines[0] and "--index-url" in lines[0] and "recipe-checks" in lines[1]  # CPU torch first


def test_the_cpu_job_keeps_the_result_cache_keyed_on_the_installed_versions_and_the_recipes():
    job = load(WORKFLOW)["jobs"]["cpu"]
    names = [step.get("uses", step.get("run", "")).split("@")[0].lstrip() for step in job["steps"]]
    cache = job["steps"][names.index("actions/cache")]["with"]
    assert names.index("actions/cache") < next(i for i, name in enumerate(names) if name.startswith("pytest"))
    assert cache["path"] == "~/.cache/recipe-checks"  # where the run writes on ubuntu (no XDG_CACHE_HOME set)
    assert "steps.installed.outputs.hash" in cache["key"] and "hashFiles('recipes/**')" in cache["key"]
    assert all(cache["key"].startswith(prefix) for prefix in cache["restore-keys"].splitlines())


def test_the_gpu_job_runs_the_gpu_checks_on_self_hosted_runners_for_known_gpus():
    from recipe_checks.gpus import GpuCatalog

    job = load(WORKFLOW)["jobs"]["gpu"]
    assert job["runs-on"][:2] == ["self-hosted", "gpu"]
    catalog = GpuCatalog.load(())
    for gpu in job["strategy"]["matrix"]["gpu"]:
        catalog.get(gpu)  # UnknownGpuError for a name recipe-checks does not know
    argv = _pytest_commands({"jobs": {"gpu": job}})["gpu"]
    assert argv[argv.index("-m") + 1] == "gpu" and '--gpu=$GPU' in argv


def test_the_gpu_job_never_runs_code_from_a_fork_on_a_self_hosted_runner():
    """A fork's pull request brings its own conftest.py, which pytest runs: the gpu job runs for the repository's
    own branches only (or after a reviewer approves the run, in a protected environment)."""
    workflow = load(WORKFLOW)
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads the bare key `on` as the boolean True
    assert "pull_request_target" not in triggers  # it would run with the base repository's secrets
    for name, job in workflow["jobs"].items():
        if "self-hosted" not in job["runs-on"]:
            continue
        same_repository = "github.event.pull_request.head.repo.full_name == github.repository"
        guarded = same_repository in " ".join(job.get("if", "").split()) or "environment" in job
        assert guarded, f"job {name!r} runs a pull request's code on a self-hosted runner without a guard"


@pytest.mark.parametrize("path", [HOOKS, PRE_COMMIT_CONFIG], ids=["pre-commit-hooks", "pre-commit-config"])
def test_the_pre_commit_hooks_have_the_keys_pre_commit_requires_and_run_a_real_command(path):
    from recipe_checks.cli import build_parser

    data = load(path)
    hooks = data if path == HOOKS else [h for repo in data["repos"] for h in repo["hooks"]]
    commands = build_parser()._subparsers._group_actions[0].choices
    for hook in hooks:
        assert {"id", "name", "entry", "language"} <= set(hook), hook
        program, command = hook["entry"].split()
        assert program == "recipe-checks" and command in commands
        pattern = re.compile(hook["files"])
        assert pattern.search("recipes/llama3-8b-qlora-rtx4090.yaml") and not pattern.search("checks/plugin.py")


def test_the_repository_hook_installs_recipe_checks_itself_and_takes_the_changed_files():
    (hook,) = load(HOOKS)
    assert hook["id"] == "recipe-checks" and hook["language"] == "python" and hook["pass_filenames"] is True
