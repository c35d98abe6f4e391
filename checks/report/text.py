"""The text format, for people: `path:line:col: RULE message`, the excerpt, why and help; then a summary."""

from __future__ import annotations

from checks.render import render_finding
from checks.report.model import RunReport


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
        blocks.extend(filter(None, ["\n".join(other_gpus_lines(report)), changed_line(report), summary_line(report)]))
    return "\n\n".join(blocks)


def other_gpus_lines(report: RunReport) -> list[str]:
    """The recipes --gpu left out, grouped by the GPUs they declare, as the plugin's terminal summary."""
    by_gpu: dict[str, list[str]] = {}
    for recipe in report.not_checked:
        by_gpu.setdefault(", ".join(recipe.other_gpus or []) or "?", []).append(recipe.path)
    if not by_gpu:
        return []
    asked = ", ".join(report.target_gpus)
    lines = [f"{len(report.not_checked)} recipe(s) declare other GPUs and were not checked against {asked}:"]
    lines.extend(f"  {gpus}: {', '.join(paths)}  (check with --gpu={gpus.split(',')[0].strip()})"
                 for gpus, paths in by_gpu.items())
    lines.append(f"Check every recipe against {asked} with --recipes-all-gpus.")
    return lines


def changed_line(report: RunReport) -> str:
    """What --changed-since left out, or why it checked every recipe."""
    if report.changed_since is None:
        return ""
    if report.every_recipe_because:
        return f"every recipe checked: {report.every_recipe_because}"
    return f"{len(report.unchanged)} recipe(s) unchanged since {report.changed_since}, not checked"


def summary_line(report: RunReport) -> str:
    counts = report.counts()
    found = ", ".join(f"{n} {severity}{'s' if n != 1 else ''}" for severity, n in counts.items() if n)
    internal = sum(1 for _ in report.internal_errors())
    if internal:
        found = ", ".join(filter(None, [found, f"{internal} internal error(s), see stderr"]))
    others = f", {len(report.not_checked)} for other GPUs not checked" if report.not_checked else ""
    traced = "" if report.with_vram else "; static checks only, --with-vram adds the traced VRAM budget"
    verdict = "FAILED" if report.failed else "ok"
    return f"{len(report.checked)} recipe(s) checked{others}: {verdict}{f' ({found})' if found else ''}{traced}"
