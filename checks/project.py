"""The project's own settings, read by the command line as the pytest plugin reads them: the `recipe_checks_*`
values of the configuration file pytest would use (pytest.ini, pyproject.toml's [tool.pytest.ini_options],
tox.ini, setup.cfg), so that `recipe-checks check` and `pytest` give one verdict on one project."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from recipe_checks.options import parse_ignore_lines

# The ini options the plugin declares (plugin.py: pytest_addoption) that decide a verdict; the command line
# reads the same ones. recipe_checks_key and recipe_checks_paths decide what pytest collects, not a verdict.
READ = ("recipe_checks_ignore", "recipe_checks_strict", "recipe_checks_gpu", "recipe_checks_gpu_profiles",
        "recipe_checks_cache_dir")


class ProjectConfigError(Exception):
    """The project's configuration file cannot be read (pytest would refuse it too): a usage error."""


@dataclass(frozen=True)
class ProjectSettings:
    path: Path | None = None  # the file read; None: no configuration file, or --isolated
    ignore: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    gpus: tuple[str, ...] = ()
    gpu_profiles: tuple[str, ...] = ()
    cache_dir: str | None = None

    @property
    def sets_anything(self) -> bool:
        return bool(self.ignore or self.strict or self.gpus or self.gpu_profiles or self.cache_dir)


def project_settings(paths: list[str], invocation_dir: Path | None = None) -> ProjectSettings:
    """The settings of the project the paths belong to, found as pytest finds its configuration file."""
    from recipe_checks import compat

    invocation_dir = invocation_dir or Path.cwd()
    try:
        path, values = compat.pytest_ini(list(paths), invocation_dir)
    except Exception as exc:  # noqa: BLE001  pytest's UsageError, a TOML or INI syntax error: what pytest says
        raise ProjectConfigError(f"cannot read the project's pytest configuration: {exc}") from None
    if path is None:
        return ProjectSettings()
    here = Path(path).parent
    try:
        return ProjectSettings(
            path=Path(path),
            ignore=parse_ignore_lines(_lines(values.get("recipe_checks_ignore"))),
            strict=_bool(values.get("recipe_checks_strict")),
            gpus=tuple(_args(values.get("recipe_checks_gpu"))),
            gpu_profiles=tuple(str(here / p) for p in _args(values.get("recipe_checks_gpu_profiles"))),
            cache_dir=next((str(here / p) for p in _args(values.get("recipe_checks_cache_dir"))), None),
        )
    except ValueError as exc:
        raise ProjectConfigError(f"{path}: {exc}") from None


# pytest's readings of an ini value (Config._getini: 'linelist', 'bool', 'args', 'paths'): a string from an INI
# file, a list of strings from pyproject.toml's ini_options.
def _lines(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip()]
    return [str(line) for line in value]


def _args(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


_TRUE, _FALSE = {"y", "yes", "t", "true", "on", "1"}, {"n", "no", "f", "false", "off", "0", ""}


def _bool(value) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"recipe_checks_strict = {value!r}: not a boolean (true or false)")


def describe(settings: ProjectSettings) -> str | None:
    """One line for the report's header: which file set what (None when it sets nothing)."""
    if settings.path is None or not settings.sets_anything:
        return None
    parts = []
    if settings.ignore:
        parts.append("ignore " + ", ".join(f"{rule} ({why})" for rule, why in settings.ignore.items()))
    if settings.strict:
        parts.append("strict")
    if settings.gpus:
        parts.append("gpu " + ", ".join(settings.gpus))
    if settings.gpu_profiles:
        parts.append("gpu profiles " + ", ".join(os.path.relpath(p) for p in settings.gpu_profiles))
    if settings.cache_dir:
        parts.append(f"cache dir {os.path.relpath(settings.cache_dir)}")
    return f"project settings ({os.path.relpath(settings.path)}): " + "; ".join(parts)
