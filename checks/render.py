"""Render findings for people (ruff-style, with the source line) and for CI (GitHub annotations, JSON)."""

from __future__ import annotations

import json
import textwrap

from recipe_checks.findings import Finding, Severity
from recipe_checks.shown import shown


def _snippet(source_line: str, finding: Finding) -> list[str]:
    loc = finding.location
    if not loc.line or not source_line:
        return []
    source_line = shown(source_line)  # a raw CR or ESC in the recipe's line reaches no terminal or CI log
    gutter = " " * len(str(loc.line))
    width = max(1, min(loc.end_column, len(source_line) + 1) - loc.column) if loc.end_column > loc.column else 1
    return [
        f"{gutter} |",
        f"{loc.line} | {source_line}",
        f"{gutter} | {' ' * (loc.column - 1)}{'^' * width}",
    ]


def render_finding(finding: Finding, source_line: str = "", *, location_first: bool = False) -> str:
    """A finding for people: the rule and message, where, the source line marked, why and help.

    `location_first`: the command line's form, `path:line:col: RULE message` on the first line (ruff's
    concise head, which editors and terminals turn into links), the excerpt and help below it."""
    label = {Severity.ERROR: "", Severity.WARNING: " (warning)", Severity.INFO: " (info)"}[finding.severity]
    head = f"{finding.rule_id}{label} {finding.message}"
    lines = [f"{finding.location}: {head}"] if location_first else [head, f"  --> {finding.location}"]
    lines.extend(_snippet(source_line, finding))
    for name, text in (("why", finding.why), ("help", finding.help)):
        if text and finding.severity is not Severity.INFO:
            wrapped = textwrap.wrap(text, width=100, subsequent_indent=" " * (len(name) + 2)) or [""]
            lines.append(f"{name}: " + "\n".join(wrapped))
    lines.extend(f"  {d}" for d in finding.details)
    return "\n".join(lines)


def render_findings(findings: list[Finding], source_lines: dict[int, str] | None = None) -> str:
    source_lines = source_lines or {}
    return "\n\n".join(render_finding(f, source_lines.get(f.location.line, "")) for f in findings)


def github_annotation(finding: Finding) -> str:
    """One `::error file=..,line=..::msg` workflow command (GitHub Actions annotations)."""
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}[finding.severity]
    message = finding.message + (f" -- help: {finding.help}" if finding.help else "")
    loc = finding.location
    return workflow_command(level, message, file=loc.path, line=loc.line, col=loc.column,
                            title=f"{finding.rule_id} {finding.check}")


def workflow_command(command: str, message: str, **properties: object) -> str:
    """`::command k=v,..::message`, each value and the message escaped (None values left out)."""
    props = ",".join(f"{k}={_escape_property(str(v))}" for k, v in properties.items() if v is not None)
    return f"::{command}{' ' + props if props else ''}::{_escape_data(message)}"


def _escape_data(text: str) -> str:
    """A workflow command's message: a newline would end the command, a '%' start an escape."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A property value (file, title): ',' separates properties and '::' ends them."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2)


def other_gpus_lines(declared: list[tuple[str, list[str]]], asked: tuple[str, ...]) -> list[str]:
    """The recipes --gpu left out ((path, the GPUs it declares) each), grouped by those GPUs, with the
    flag that checks them: the plugin's terminal summary and the CLI's text report alike."""
    by_gpu: dict[str, list[str]] = {}
    for path, gpus in declared:
        by_gpu.setdefault(", ".join(gpus) or "?", []).append(path)
    if not by_gpu:
        return []
    wanted = ", ".join(asked)
    lines = [f"{len(declared)} recipe(s) declare other GPUs and were not checked against {wanted}:"]
    lines.extend(f"  {gpus}: {', '.join(paths)}  (check with --gpu={gpus.split(',')[0].strip()})"
                 for gpus, paths in by_gpu.items())
    lines.append(f"Check every recipe against {wanted} with --recipes-all-gpus.")
    return lines


def changed_line(ref: str, every_recipe_because: str | None, unchanged: int) -> str:
    """What a changed-only run left out, or why it checked every recipe."""
    if every_recipe_because:
        return f"every recipe checked: {every_recipe_because}"
    return f"{unchanged} recipe(s) unchanged since {ref}, not checked"
