"""What `recipe-checks check` reports, and how: the run report (model) and one module per output format.

Each format module has `render(report) -> str`; FORMATS maps the --format names to them.
"""

from __future__ import annotations

from recipe_checks.report import github, json, junit, sarif, text
from recipe_checks.report.model import CheckReport, RecipeReport, RunReport
from recipe_checks.report.selection import RuleSelection, SelectionError

FORMATS = {"text": text.render, "json": json.render, "github": github.render, "sarif": sarif.render,
           "junit": junit.render}

__all__ = ["FORMATS", "CheckReport", "RecipeReport", "RuleSelection", "RunReport", "SelectionError"]
