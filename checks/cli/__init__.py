"""The `recipe-checks` command: lint recipes, estimate their memory, explain rules, list GPUs and bundled
models, print the schema, build fixtures. One module per command; each registers its own subparser.

`check` runs the same engine as the pytest plugin (recipe_checks.engine), with the same options.
"""

from __future__ import annotations

import argparse
import os
import sys

from recipe_checks.cli import check, convert, estimate, fixtures, info, init
from recipe_checks.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, UsageError

__all__ = ["EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]

COMMANDS = (check, estimate, info, fixtures, init, convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipe-checks", description="Check fine-tuning recipes against a target GPU before any GPU hour is spent."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def version() -> str:
    """The installed distribution's version (no import of the package's heavy parts)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("recipe-checks")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "warns_versions", False):
        from recipe_checks.compat import bitsandbytes_without_hub_kernel, version_warnings

        bitsandbytes_without_hub_kernel()
        for warning in version_warnings():
            print(f"recipe-checks: warning: {warning}", file=sys.stderr)
    if hasattr(args, "isolated"):  # check and estimate read the project's settings as the pytest plugin does
        from recipe_checks.cli.common import read_project_settings
        from recipe_checks.project import ProjectConfigError

        try:
            read_project_settings(args, getattr(args, "paths", None) or [args.recipe])
        except ProjectConfigError as exc:
            print(f"recipe-checks: {exc}", file=sys.stderr)
            return EXIT_USAGE
        from recipe_checks.project import describe

        said = describe(args.project)
        if said and not getattr(args, "quiet", False):  # settings the command line did not show: said once
            print(f"recipe-checks: {said}", file=sys.stderr)
    if getattr(args, "gpu_profiles", None):  # every command that reads --gpu-profiles says what a file redefined
        from recipe_checks.gpus import override_notes

        for note in override_notes(tuple(args.gpu_profiles)):
            print(f"recipe-checks: warning: {note}", file=sys.stderr)
    from recipe_checks.network import offline

    try:
        with offline(getattr(args, "recipes_allow_network", False)):  # the whole command: no library goes online
            code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:  # the reader stopped reading (`recipe-checks gpus | head`): no traceback, none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
