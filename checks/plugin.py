"""The pytest plugin (entry point `pytest11: recipe_checks`): hooks only.

Collection nodes live in checks.collect, the checks in checks.rules, options in checks.options.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from checks.collect import SESSION_KEY, RecipeFile, RecipeSession
from checks.gpus import GpuCatalog, GpuProfileError, UnknownGpuError
from checks.options import Options, add_options, parse_ignore_lines, split_names
from checks.recipe.load import looks_like_recipe


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("recipe-checks", "recipe-checks: verify fine-tuning recipes")
    add_options(group.addoption)
    parser.addini("recipe_checks_key", "top-level key that marks a YAML file as a recipe", default="model")
    parser.addini(
        "recipe_checks_ignore",
        "rules ignored for every recipe, one 'RCxxx: reason' per line",
        type="linelist",
        default=[],
    )
    parser.addini("recipe_checks_gpu_profiles", "extra GPU profile files", type="paths", default=[])
    parser.addini("recipe_checks_strict", "fail on warning-level findings too", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gpu(min_memory_gib=None): needs a CUDA GPU; runs for real where CUDA is present, skipped elsewhere",
    )
    config.addinivalue_line("markers", "recipe_check: a recipe-checks item (recipe x check)")
    # Deprecation noise from torch internals that transformers imports; nothing a recipe author can act on.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    profiles = tuple(str(p) for p in config.getini("recipe_checks_gpu_profiles")) + tuple(
        config.getoption("gpu_profiles") or ()
    )
    try:
        catalog = GpuCatalog.load(profiles)
    except GpuProfileError as exc:
        raise pytest.UsageError(f"recipe-checks: {exc}") from None
    gpus = split_names(config.getoption("gpu"))
    for name in gpus:
        try:
            catalog.get(name)
        except UnknownGpuError as exc:
            raise pytest.UsageError(f"--gpu: {exc}") from None
    if config.getoption("recipes_all_gpus") and not gpus:
        raise pytest.UsageError("--recipes-all-gpus needs --gpu=NAME: the GPU to check every recipe against")
    options = Options(
        gpus=gpus,
        all_gpus=config.getoption("recipes_all_gpus"),
        allow_network=config.getoption("recipes_allow_network"),
        trust_remote_code=config.getoption("recipes_trust_remote_code"),
        strict=config.getoption("recipes_strict") or config.getini("recipe_checks_strict"),
        ignore=parse_ignore_lines(config.getini("recipe_checks_ignore")),
        gpu_profiles=profiles,
    )
    config.stash[SESSION_KEY] = RecipeSession(options=options, catalog=catalog)


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


def pytest_report_header(config: pytest.Config) -> list[str]:
    session: RecipeSession = config.stash[SESSION_KEY]
    if session.options.gpus:
        targets = "; ".join(session.catalog.get(g).describe() for g in session.options.gpus)
        scope = " (every recipe)" if session.options.all_gpus else ""
        target_line = f"target GPU: {targets}{scope}"
    else:
        target_line = "target GPU: each recipe's hardware.gpu (pass --gpu=NAME to choose one)"
    versions = ", ".join(
        f"{d} {_version(d)}" for d in ("torch", "transformers", "peft", "bitsandbytes")
    )
    return [
        f"recipe-checks {_version('recipe-checks')}: {target_line}",
        f"recipe-checks: local device: {_local_device()} (checks use the target profile, not this machine)",
        f"recipe-checks: {versions}",
    ]


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    key = parent.config.getini("recipe_checks_key")
    explicit = any(Path(arg.split("::")[0]).resolve() == file_path.resolve() for arg in parent.config.args)
    if not explicit:
        try:
            text = file_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        if not looks_like_recipe(text, key):
            return None
    return RecipeFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    off_target = [item for item in items if getattr(item, "off_target", False)]
    if off_target:
        config.hook.pytest_deselected(items=off_target)
        items[:] = [item for item in items if not getattr(item, "off_target", False)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return
    import torch

    if not torch.cuda.is_available():
        pytest.skip(
            "needs a CUDA GPU: torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}); run it on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    need = marker.kwargs.get("min_memory_gib")
    if need is not None:
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        if total < float(need):
            pytest.skip(f"needs a GPU with {need} GiB; this one has {total:.1f} GiB")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session: RecipeSession | None = config.stash.get(SESSION_KEY, None)
    if session is None or not session.not_for_this_gpu:
        return
    by_gpu: dict[str, list[str]] = {}
    for path, gpus in sorted(session.not_for_this_gpu.items()):
        by_gpu.setdefault(", ".join(gpus) or "?", []).append(path)
    asked = ", ".join(session.options.gpus)
    terminalreporter.write_sep("-", "recipe-checks: recipes for other GPUs")
    total = len(session.not_for_this_gpu)
    terminalreporter.write_line(f"{total} recipe(s) declare other GPUs and were not checked against {asked}:")
    for gpus, paths in by_gpu.items():
        first = gpus.split(",")[0].strip()
        terminalreporter.write_line(f"  {gpus}: {', '.join(paths)}  (check with --gpu={first})")
    terminalreporter.write_line(f"Check every recipe against {asked} with --recipes-all-gpus.")
