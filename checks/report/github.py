"""The github format: GitHub Actions workflow commands, one annotation per finding on its line."""

from __future__ import annotations

from recipe_checks.render import github_annotation, workflow_command
from recipe_checks.report.model import RunReport


def render(report: RunReport) -> str:
    lines = [github_annotation(finding) for _, _, finding in report.findings()]
    for recipe, check, error in report.internal_errors():
        where = f"{recipe.path}::{check.name}" if check else recipe.path
        lines.append(workflow_command("error", f"{where}: {error}", file=recipe.path,
                                      title="recipe-checks internal error"))
    for recipe in report.not_checked:
        message = (f"not checked: declares {', '.join(recipe.other_gpus or [])}, not "
                   f"{', '.join(report.target_gpus)} (use --recipes-all-gpus)")
        lines.append(workflow_command("notice", message, file=recipe.path, title="recipe-checks"))
    by_recipe: dict[tuple[str, str], list[str]] = {}  # one notice a recipe and reason (GitHub caps annotations)
    for recipe, check in report.not_run():
        by_recipe.setdefault((recipe.path, check.skipped or ""), []).append(check.name)
    for (path, reason), names in by_recipe.items():
        lines.append(workflow_command("notice", f"{', '.join(names)}: {reason}", file=path,
                                      title="recipe-checks: not run"))
    lines += [workflow_command("notice", f"skipped: {why}", file=path, title="recipe-checks: not a recipe")
              for path, why in report.not_recipes]
    return "\n".join(lines)
