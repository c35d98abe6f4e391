"""The pytest plugin (entry point `pytest11: recipe_checks`): hooks only.

Collection nodes live in recipe_checks.collect, the checks in recipe_checks.rules, options in recipe_checks.options.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipe_checks import annotate
from recipe_checks.collect import SESSION_KEY, RecipeFile, RecipeItem, RecipeSession, RecipeVersionWarning
from recipe_checks.gpus import GpuCatalog, GpuProfileError, UnknownGpuError
from recipe_checks.options import (GPU_HELP, Options, add_cache_options, add_ci_options, add_options, parse_ignore_lines,
                            split_names)
from recipe_checks.discover import classify
from recipe_checks.shown import shown
from recipe_checks.result_cache import RunTally, cache_directory


_GROUP = "recipe-checks"
# --gpu is recipe-checks' main option, and a name other projects use too (a conftest.py of their own with
# `parser.addoption("--gpu")`). The plugin registers --recipes-gpu at once and --gpu only once the initial
# conftest.py files have registered theirs (pytest_load_initial_conftests): a host's --gpu is the host's.
_GPU_CLASH = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(_GROUP, "recipe-checks: verify fine-tuning recipes")
    add_options(group.addoption, gpu_flag="--recipes-gpu")
    add_ci_options(group.addoption)
    add_cache_options(group.addoption)
    group.addoption(
        "--recipes-annotate",
        action="store_true",
        default=False,
        help="print GitHub Actions annotations for the findings and append a job summary to "
        "$GITHUB_STEP_SUMMARY (on by itself under GITHUB_ACTIONS=true)",
    )
    parser.addini("recipe_checks_key", "top-level key that marks a YAML file as a recipe", default="model")
    parser.addini(
        "recipe_checks_paths",
        "files or directories holding recipes, collected on every run (elsewhere only paths given on "
        "the command line, or any path when a recipe-checks option is passed, are searched)",
        type="paths",
        default=[],
    )
    parser.addini(
        "recipe_checks_ignore",
        "rules ignored for every recipe, one 'RCxxx: reason' per line",
        type="linelist",
        default=[],
    )
    parser.addini("recipe_checks_gpu", "the target GPU(s) when the command line names none (as --recipes-gpu)",
                  type="args", default=[])
    parser.addini("recipe_checks_gpu_profiles", "extra GPU profile files", type="paths", default=[])
    parser.addini("recipe_checks_strict", "fail on warning-level findings too", type="bool", default=False)
    parser.addini("recipe_checks_cache_dir", "the result cache's directory, relative to the ini file (the "
                  "command line and RECIPE_CHECKS_CACHE_DIR come first)", type="paths", default=[])


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser):
    """After the host's initial conftest.py files and plugins have added their options: --gpu as another name of
    --recipes-gpu, unless one of them has a --gpu (argparse refuses an option string twice)."""
    result = yield
    from recipe_checks.compat import CompatError, pytest_option_names

    try:
        taken = pytest_option_names(parser)
    except CompatError:  # a pytest whose parser is not read this way: --recipes-gpu only, said in the header
        taken = {"--gpu"}
    early_config.stash[_GPU_CLASH] = "--gpu" in taken
    if "--gpu" not in taken:
        parser.getgroup(_GROUP).addoption("--gpu", dest="recipes_gpu", action="append", default=[], metavar="NAME",
                                          help=f"{GPU_HELP} Same as --recipes-gpu.")
    return result


def _gpu_flag(config: pytest.Config) -> str:
    """The flag that names the target GPU in this project: --gpu, or --recipes-gpu where the host has a --gpu."""
    return "--recipes-gpu" if config.stash.get(_GPU_CLASH, False) else "--gpu"


def _gpu_names(config: pytest.Config) -> tuple[str, ...]:
    return split_names(config.getoption("recipes_gpu")) or split_names(config.getini("recipe_checks_gpu"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gpu(min_memory_gib=None): a recipe-checks item that needs a CUDA GPU; runs for real where CUDA is "
        "present, skipped elsewhere (acts on recipe items only)",
    )
    config.addinivalue_line("markers", "recipe_check: a recipe-checks item (recipe x check)")
    config.addinivalue_line("markers", "slow: a recipe-checks item that takes seconds (cpu-train); "
                                       "deselect with -m 'not slow'")
    profiles = tuple(str(p) for p in config.getini("recipe_checks_gpu_profiles")) + tuple(
        config.getoption("gpu_profiles") or ()
    )
    try:
        catalog = GpuCatalog.load(profiles)
    except GpuProfileError as exc:
        raise pytest.UsageError(f"recipe-checks: {exc}") from None
    gpus = _gpu_names(config)
    for name in gpus:
        try:
            catalog.resolve(name)  # an ambiguous name ('a100') runs the checks its profiles agree on
        except UnknownGpuError as exc:
            raise pytest.UsageError(f"{_gpu_flag(config)}: {exc}") from None
    if config.getoption("recipes_all_gpus") and not gpus:
        raise pytest.UsageError(f"--recipes-all-gpus needs {_gpu_flag(config)}=NAME: the GPU to check every recipe "
                                "against")
    options = Options(
        gpus=gpus,
        all_gpus=config.getoption("recipes_all_gpus"),
        allow_network=config.getoption("recipes_allow_network"),
        trust_remote_code=config.getoption("recipes_trust_remote_code"),
        strict=config.getoption("recipes_strict") or config.getini("recipe_checks_strict"),
        ignore=parse_ignore_lines(config.getini("recipe_checks_ignore")),
        gpu_profiles=profiles,
        train_steps=config.getoption("recipes_train_steps"),
        format=config.getoption("recipes_format"),
        fixture_cache=_fixture_cache(config),
        baseline=config.getoption("recipes_baseline"),
        baseline_threshold=config.getoption("recipes_baseline_threshold"),
        cache_dir=_cache_dir(config),
    )
    _check_baseline(config)
    config.stash[_CACHE_KEY] = RunTally(options.cache_dir)
    config.stash[SESSION_KEY] = RecipeSession(options=options, catalog=catalog,
                                              changes=_changes(config, profiles))
    if annotate.enabled(config.getoption("recipes_annotate")) and not hasattr(config, "workerinput"):
        config.stash[_RUN_KEY] = annotate.RunRecord()  # fed by its pytest_runtest_logreport, as junitxml's LogXML is
        config.pluginmanager.register(config.stash[_RUN_KEY], "recipe_checks_annotate")
    if _asks_for_recipes(config):
        from recipe_checks.compat import bitsandbytes_without_hub_kernel

        bitsandbytes_without_hub_kernel()
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller prints the summary
        config.stash[_WORKER_KEY] = True


def _changes(config: pytest.Config, profiles: tuple[str, ...]):
    """--recipes-changed-since: what differs from the REF in the repository of the first path named."""
    ref = config.getoption("recipes_changed_since")
    if not ref:
        return None
    from recipe_checks.changed import ChangedSinceError, changes_since

    here = config.invocation_params.dir
    deciding = [here / p for p in profiles] + ([config.inipath] if config.inipath else [])
    try:
        return changes_since(ref, _anchor(config), deciding)
    except ChangedSinceError as exc:
        raise pytest.UsageError(f"--recipes-changed-since: {exc}") from None


def _anchor(config: pytest.Config) -> Path:
    """Where the recipes of this run live: the first path named that exists, else the invocation directory."""
    here = config.invocation_params.dir
    named = [here / arg.split("::")[0] for arg in config.args] if config.args_source is pytest.Config.ArgsSource.ARGS else []
    return next((p for p in named if p.exists()), here)


def _check_baseline(config: pytest.Config) -> None:
    spec = config.getoption("recipes_baseline")
    if spec:
        from recipe_checks.baseline import BaselineError, check_baseline

        try:
            check_baseline(spec, _anchor(config))
        except BaselineError as exc:
            raise pytest.UsageError(f"--recipes-baseline: {exc}") from None


def _cache_dir(config: pytest.Config) -> str | None:
    """The result cache's directory from the options, the environment and the ini (None: off)."""
    ini = config.getini("recipe_checks_cache_dir")
    return cache_directory(config.getoption("recipes_cache_dir"), no_cache=config.getoption("recipes_no_cache"),
                           ini=ini[0] if ini else None)


def _fixture_cache(config: pytest.Config) -> str | None:
    """The tiny-random fixtures' cache the fixtures plugin's options name (None: huggingface_hub's own)."""
    option = config.getoption("recipes_fixture_cache", None)
    try:
        ini = config.getini("recipe_checks_fixture_cache")
    except ValueError:  # the fixtures plugin is not loaded (-p no:recipe_checks_fixtures)
        ini = []
    return str(option) if option else (str(ini[0]) if ini else None)


# The options that say "check recipes": passing any of them searches every collected path for recipes.
_RECIPE_OPTIONS = ("recipes_gpu", "recipes_all_gpus", "recipes_allow_network", "recipes_trust_remote_code",
                   "recipes_strict", "gpu_profiles", "recipes_changed_since", "recipes_baseline")
_WORKER_KEY = pytest.StashKey[bool]()


_CACHE_KEY = pytest.StashKey[RunTally]()  # the result cache's hits and misses in this run
_NOT_SEARCHED_KEY = pytest.StashKey[list[str]]()  # why directories were left out of collection (discover.py)
_NOT_RECIPES_KEY = pytest.StashKey[list[str]]()  # YAML files searched and left out, where that is worth saying
_RECIPES_COLLECTED_KEY = pytest.StashKey[bool]()  # this process collected a recipe file: a run that checks recipes
_RUN_KEY = pytest.StashKey[annotate.RunRecord]()  # the items' outcomes, for annotations and the job summary


def _local_device() -> str:
    import sys

    torch = sys.modules.get("torch")  # importing torch here would slow --collect-only for everyone
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        except Exception:
            pass
    gpus_dir = Path("/proc/driver/nvidia/gpus")
    if gpus_dir.is_dir():
        names = []
        for info in sorted(gpus_dir.glob("*/information")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        if names:
            return ", ".join(names)
    return "no CUDA device"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _asks_for_recipes(config: pytest.Config) -> bool:
    """Whether this run may check recipes: paths were named, the ini names recipe paths, or an option asks."""
    return (config.args_source is pytest.Config.ArgsSource.ARGS or bool(config.getini("recipe_checks_paths"))
            or any(config.getoption(name) for name in _RECIPE_OPTIONS))


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _asks_for_recipes(config):
        return []  # a host project's plain run: nothing of ours to report
    session: RecipeSession = config.stash[SESSION_KEY]
    if session.options.gpus:
        targets = "; ".join(session.catalog.resolve(g).describe() for g in session.options.gpus)
        scope = " (every recipe)" if session.options.all_gpus else ""
        target_line = f"target GPU: {targets}{scope}"
    else:
        target_line = f"target GPU: each recipe's hardware.gpu (pass {_gpu_flag(config)}=NAME to choose one)"
    versions = ", ".join(
        f"{d} {_version(d)}" for d in ("torch", "transformers", "peft", "bitsandbytes")
    )
    from recipe_checks.compat import version_warnings

    cache_dir = session.options.cache_dir
    return [
        f"recipe-checks {_version('recipe-checks')}: {target_line}",
        f"recipe-checks: local device: {_local_device()} (checks use the target profile, not this machine)",
        f"recipe-checks: {versions}",
        f"recipe-checks: result cache: {cache_dir if cache_dir else 'off'}",
        *([_GPU_CLASH_LINE] if config.stash.get(_GPU_CLASH, False) else []),
        *(f"recipe-checks: WARNING: {note}" for note in session.catalog.override_notes()),
        *(f"recipe-checks: WARNING: {warning}" for warning in version_warnings()),
    ]


_GPU_CLASH_LINE = ("recipe-checks: --gpu is this project's own option (a conftest.py or plugin defines it): "
                   "name the target GPU with --recipes-gpu=NAME, or recipe_checks_gpu in the ini file")


def _searched(config: pytest.Config, file_path: Path) -> bool | None:
    """Whether a YAML file may be a recipe of this run: True, it is one whatever it holds (named on
    the command line); None, it is one if it has the marker key; False, the plugin stays out.

    Recipes are collected only where the user points: paths given on the command line, the ini's
    `recipe_checks_paths`, or any collected path once a recipe-checks option is passed. A plain
    `pytest` in a project that has unrelated YAML (a Hydra `conf/config.yaml` with `model:`)
    collects none of it.
    """
    resolved = file_path.resolve()
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        for arg in config.args:
            named = Path(arg.split("::")[0]).resolve()
            if named == resolved:
                return True
        return None
    if any(resolved == root.resolve() or root.resolve() in resolved.parents
           for root in config.getini("recipe_checks_paths")):
        return None
    if any(config.getoption(name) for name in _RECIPE_OPTIONS):
        return None
    return False


@pytest.hookimpl(trylast=True)  # after pytest's own (--ignore, norecursedirs): what it leaves out needs no note
def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Where the plugin searches for recipes, pytest's collection stops at directories it cannot walk: deeper
    than recipe_checks.discover.MAX_DEPTH (pytest recurses once a level: a RecursionError ends the whole run) and
    directory links that loop. Each is said in the terminal summary."""
    if not _asks_for_recipes(config) or not collection_path.is_dir():
        return None
    from recipe_checks.discover import collection_cutoff

    here = config.invocation_params.dir
    roots = [Path(os.path.abspath(here / arg.split("::")[0])) for arg in config.args]
    reason = collection_cutoff(collection_path, roots)
    if reason is None:
        return None
    config.stash.setdefault(_NOT_SEARCHED_KEY, []).append(reason)
    return True


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    searched = _searched(parent.config, file_path)
    if searched is False:
        return None
    if searched is None:
        recipe, why = classify(file_path, parent.config.getini("recipe_checks_key"))
        if not recipe:
            if why is not None:  # empty, not text: said in the summary of a run that checks recipes
                parent.config.stash.setdefault(_NOT_RECIPES_KEY, []).append(f"{shown(str(file_path))}: skipped: {why}")
            return None
    parent.config.stash[_RECIPES_COLLECTED_KEY] = True
    return RecipeFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(isinstance(item, RecipeItem) for item in items):
        from recipe_checks.compat import version_warnings

        for warning in version_warnings():  # in the warnings summary too, where CI logs are read
            warnings.warn(RecipeVersionWarning(warning), stacklevel=1)
    recipe_session = config.stash.get(SESSION_KEY, None)
    off_target = [item for item in items if getattr(item, "off_target", False)]
    if off_target:
        config.hook.pytest_deselected(items=off_target)
        items[:] = [item for item in items if not getattr(item, "off_target", False)]
        if recipe_session is not None:
            recipe_session.deselected = [item.nodeid for item in off_target]
    changes = recipe_session.changes if recipe_session is not None else None
    if changes is not None:
        from recipe_checks.recipe.inputs import recipe_inputs

        reads: dict[int, tuple[Path, ...]] = {}  # a recipe file's inputs, once for all its items

        def selected(item: RecipeItem) -> bool:
            state = item.state
            if id(state) not in reads:
                reads[id(state)] = recipe_inputs(state.fs_path, state.loaded)
            return changes.selects(item.path, reads[id(state)])

        unchanged = [item for item in items if isinstance(item, RecipeItem) and not selected(item)]
        if unchanged:
            config.hook.pytest_deselected(items=unchanged)
            dropped = {id(item) for item in unchanged}
            items[:] = [item for item in items if id(item) not in dropped]
            recipe_session.deselected += [item.nodeid for item in unchanged]
            recipe_session.unchanged = sorted({item.parent.nodeid for item in unchanged})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Each recipe item's report carries its findings as plain data (pytest-xdist ships it to the controller)."""
    report = yield
    if isinstance(item, RecipeItem):
        report.recipe_checks = annotate.item_payload(item.state.path, item.check, item.gpu,
                                                     item.result if call.when == "call" else None)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    recipe_session = config.stash.get(SESSION_KEY, None)
    if recipe_session is not None and config.stash.get(_WORKER_KEY, False):
        config.workeroutput["recipe_checks"] = {
            "not_for_this_gpu": recipe_session.not_for_this_gpu,
            "deselected": recipe_session.deselected,
            "unchanged": recipe_session.unchanged,
            "cache": config.stash[_CACHE_KEY].counts(),
            "not_searched": config.stash.get(_NOT_SEARCHED_KEY, []),
            "not_recipes": (config.stash.get(_NOT_RECIPES_KEY, [])
                            if config.stash.get(_RECIPES_COLLECTED_KEY, False) else []),
        }
    elif recipe_session is not None and recipe_session.unchanged and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # no recipe changed: nothing to check is a pass, not an empty run


@dataclass(frozen=True)
class _DeselectedNode:
    """What pytest's terminal reporter counts for a deselected item, rebuilt from a worker's node id."""

    nodeid: str


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist: the controller collects nothing, so it takes the first worker's deselected recipes; it
    sums every worker's result cache counts."""
    recipe_session = node.config.stash.get(SESSION_KEY, None)
    output = getattr(node, "workeroutput", {}).get("recipe_checks")
    if recipe_session is None or output is None:
        return
    node.config.stash[_CACHE_KEY].add_worker(output["cache"])
    if recipe_session.from_worker:
        return
    recipe_session.from_worker = True
    node.config.stash[_NOT_SEARCHED_KEY] = output.get("not_searched", [])  # every worker collects the same
    if output.get("not_recipes"):
        node.config.stash[_NOT_RECIPES_KEY] = output["not_recipes"]
        node.config.stash[_RECIPES_COLLECTED_KEY] = True
    recipe_session.not_for_this_gpu.update(output["not_for_this_gpu"])
    recipe_session.unchanged = output["unchanged"]
    if output["deselected"]:
        node.config.hook.pytest_deselected(items=[_DeselectedNode(n) for n in output["deselected"]])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session: RecipeSession | None = config.stash.get(SESSION_KEY, None)
    if session is None or config.stash.get(_WORKER_KEY, False):
        return
    if session.changes is not None:
        _report_changes(terminalreporter, session)
    if session.not_for_this_gpu:
        _report_other_gpus(terminalreporter, session)
    not_searched = config.stash.get(_NOT_SEARCHED_KEY, [])
    if not_searched:
        terminalreporter.write_sep("-", "recipe-checks: directories not searched")
        for reason in not_searched[:10]:
            terminalreporter.write_line(f"WARNING: {reason}")
        if len(not_searched) > 10:
            terminalreporter.write_line(f"... and {len(not_searched) - 10} more")
    not_recipes = config.stash.get(_NOT_RECIPES_KEY, [])
    run = config.stash.get(_RUN_KEY, None)
    if not_recipes and config.stash.get(_RECIPES_COLLECTED_KEY, False):  # a run that checks recipes: a host's is not
        terminalreporter.write_sep("-", "recipe-checks: YAML files skipped, not recipes")
        for line in not_recipes[:10]:
            terminalreporter.write_line(line)
        if len(not_recipes) > 10:
            terminalreporter.write_line(f"... and {len(not_recipes) - 10} more")
    if session.catalog.override_notes() and _asks_for_recipes(config):  # at the end too: -q hides the header
        terminalreporter.write_sep("-", "recipe-checks: GPU profiles redefined")
        for note in session.catalog.override_notes():
            terminalreporter.write_line(f"WARNING: {note}")
    _report_cache(terminalreporter, config.stash[_CACHE_KEY])
    if run is not None and (run.items or session.unchanged):  # a run that left every recipe out says so too
        lines = annotate.annotation_lines(run.findings())
        for line in lines:  # workflow commands: read by the runner from the step's log, one a line
            terminalreporter.write_line(line)
        changes = session.changes
        annotate.write_summary(run.summary(unchanged=session.unchanged, ref=changes.ref if changes else None,
                                           annotated=sum(not line.startswith("::notice") for line in lines),
                                           warnings=session.catalog.override_notes()))


def _report_cache(terminalreporter, cache: RunTally) -> None:
    hits, misses, writes = cache.counts()
    if hits or misses:
        terminalreporter.write_line(f"recipe-checks: result cache: {hits} hit(s), {misses} miss(es), {writes} "
                                    f"written ({cache.directory})")


def _report_changes(terminalreporter, session: RecipeSession) -> None:
    changes = session.changes
    from recipe_checks.render import changed_line

    terminalreporter.write_sep("-", "recipe-checks: changed-only run")
    terminalreporter.write_line(changed_line(changes.ref, changes.everything, len(session.unchanged)))


def _report_other_gpus(terminalreporter, session: RecipeSession) -> None:
    from recipe_checks.render import other_gpus_lines

    terminalreporter.write_sep("-", "recipe-checks: recipes for other GPUs")
    for line in other_gpus_lines(sorted(session.not_for_this_gpu.items()), session.options.gpus):
        terminalreporter.write_line(line)
