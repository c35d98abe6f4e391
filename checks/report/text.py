"""The text format, for people: `path:line:col: RULE message`, the excerpt, why and help; then a summary."""

from __future__ import annotations

from recipe_checks.render import changed_line, other_gpus_lines, render_finding
from recipe_checks.report.model import RunReport


def render(report: RunReport) -> str:
    blocks: list[str] = []
    for recipe in report.recipes:
        for check in recipe.checks:
            blocks.extend(render_finding(f, recipe.source_line(f.location.line), location_first=True)
                          for f in check.findings)
            if report.verbose and check.skipped:
                blocks.append(f"{recipe.path}::{check.name}: skipped: {check.skipped}")
            if report.verbose:
                blocks.extend(f"{recipe.path}::{check.name}: not run: {waiting}" for waiting in check.waiting)
    if not report.quiet:
        others = other_gpus_lines([(r.path, r.other_gpus or []) for r in report.not_checked], report.target_gpus)
        changed = (changed_line(report.changed_since, report.every_recipe_because, len(report.unchanged))
                   if report.changed_since is not None else "")
        not_run = "\n".join(not_run_lines(report) + [  # --verbose lists each above
            f"partly run: {recipe.path}::{check.name}: {'; '.join(check.waiting)}"
            for recipe, check in report.partly_run()]) if not report.verbose else ""
        files = "\n".join(f"{path}: skipped: {why}" for path, why in report.not_recipes[:10])
        files += f"\n... and {len(report.not_recipes) - 10} more" if len(report.not_recipes) > 10 else ""
        blocks.extend(filter(None, ["\n".join(others), changed, not_run, files, summary_line(report)]))
    return "\n\n".join(blocks)


def not_run_lines(report: RunReport) -> list[str]:
    """One line per reason checks did not run: which checks, of which recipes (--verbose: one line a check)."""
    lines = []
    for reason, names, paths in report.not_run_groups():
        recipes = paths[0] if len(paths) == 1 else f"{len(paths)} recipes ({paths[0]}, ...)"
        lines.append(f"not run: {', '.join(names)} of {recipes}: {reason.removeprefix('not run: ')}")
    return lines


def summary_line(report: RunReport) -> str:
    counts = report.counts()
    found = ", ".join(f"{n} {severity}{'s' if n != 1 else ''}" for severity, n in counts.items() if n)
    internal = sum(1 for _ in report.internal_errors())
    if internal:
        found = ", ".join(filter(None, [found, f"{internal} internal error(s), see stderr"]))
    others = f", {len(report.not_checked)} for other GPUs not checked" if report.not_checked else ""
    traced = "" if report.with_vram else "; static checks only, --with-vram adds the traced VRAM budget"
    not_run = len(report.not_run())
    not_run = f"; {not_run} check{'s' if not_run != 1 else ''} not run" if not_run else ""
    partly = len(report.partly_run())
    not_run += f"; {partly} check{'s' if partly != 1 else ''} partly run" if partly else ""
    verdict = "FAILED" if report.failed else "ok"
    files = len(report.not_recipes)
    files = f"; {files} YAML file{'s' if files != 1 else ''} skipped, not recipes" if files else ""
    return (f"{len(report.checked)} recipe(s) checked{others}: {verdict}{f' ({found})' if found else ''}{not_run}"
            f"{files}{traced}")
