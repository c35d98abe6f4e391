"""The distribution's layout: the import name recipe_checks, its source the checks/ folder (pyproject.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import recipe_checks

REPO = Path(__file__).resolve().parent.parent


def test_every_package_of_the_checks_folder_is_in_the_distribution_under_recipe_checks():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"recipe_checks": "checks"}
    folders = sorted(".".join(("recipe_checks", *p.parent.relative_to(REPO / "checks").parts))
                     for p in (REPO / "checks").rglob("__init__.py") if "__pycache__" not in p.parts)
    assert sorted(setuptools["packages"]) == folders


def test_the_installed_package_is_this_checkout_and_no_module_named_checks_is_imported():
    import sys

    assert Path(recipe_checks.__file__).resolve().parent == REPO / "checks"
    assert "checks" not in sys.modules  # the suite imports recipe_checks only, as a host project would
