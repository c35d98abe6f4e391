"""What the commands share: exit codes, the usage error, reading the run options from the flags."""

from __future__ import annotations

import argparse
import os

from recipe_checks.options import Options, split_names
from recipe_checks.result_cache import cache_directory

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Flags that do not go together: exit 2 with the message."""


def lexists(path: str) -> bool:
    """Whether a path names anything, a dangling or looping link included (it gets its finding)."""
    try:
        return os.path.lexists(path)
    except (ValueError, OSError):  # a NUL byte: reported as a finding of that path, not a crash
        return True


def add_isolated(add) -> None:
    add("--isolated", action="store_true", default=False,
        help="ignore the project's recipe_checks_* settings in its pytest configuration (pyproject.toml, "
             "pytest.ini, tox.ini, setup.cfg), which are otherwise read as the pytest plugin reads them")


def read_project_settings(args: argparse.Namespace, paths: list[str]) -> None:
    """The project's settings (checks/project.py) onto the flags, the flags first: its GPU when --gpu names none,
    its profiles before --gpu-profiles' (a later file redefines an earlier one), its ignores, strict, cache dir."""
    from recipe_checks.project import ProjectSettings, project_settings

    args.project = ProjectSettings() if args.isolated else project_settings(paths)
    if not args.gpu:
        args.gpu = list(args.project.gpus)
    args.gpu_profiles = [*args.project.gpu_profiles, *args.gpu_profiles]


def options_from_args(args: argparse.Namespace, catalog) -> Options:
    """The run options from the flags `add_options` declared: one reading for check and estimate."""
    from recipe_checks.project import ProjectSettings

    project = getattr(args, "project", None) or ProjectSettings()
    gpus = split_names(args.gpu)
    for name in gpus:
        catalog.resolve(name)  # UnknownGpuError: a usage error; an ambiguous name ('a100') runs what it can
    if args.recipes_all_gpus and not gpus:
        raise UsageError("--recipes-all-gpus needs --gpu NAME: the GPU to check every recipe against")
    return Options(
        gpus=gpus,
        all_gpus=args.recipes_all_gpus,
        allow_network=args.recipes_allow_network,
        trust_remote_code=args.recipes_trust_remote_code,
        strict=args.recipes_strict or project.strict,
        ignore=dict(project.ignore),
        gpu_profiles=tuple(args.gpu_profiles),
        train_steps=args.recipes_train_steps,
        format=args.recipes_format,
        baseline=getattr(args, "recipes_baseline", None),  # check's regression gate (estimate has none)
        baseline_threshold=getattr(args, "recipes_baseline_threshold", 0.05),
        cache_dir=cache_directory(args.recipes_cache_dir, no_cache=args.recipes_no_cache, ini=project.cache_dir),
    )
