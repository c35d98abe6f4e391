"""The sarif format: SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

Paths under the working directory are written relative to it with uriBaseId %SRCROOT% (run it from the
repository root, as code scanning expects); others as absolute file URIs. Fingerprints do not depend on
line numbers, so an alert survives edits above it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from recipe_checks.findings import Finding, Severity
from recipe_checks.report.model import RunReport

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def render(report: RunReport, root: Path | None = None) -> str:
    root = (root or Path.cwd()).resolve()
    index = {rule.id: i for i, rule in enumerate(report.rules)}
    results = [_result(recipe.path, check.name, finding, index, root)
               for recipe, check, finding in report.findings()]
    notifications = [{"level": "error", "message": {"text": f"{recipe.path}"
                                                    f"{'::' + check.name if check else ''}: {error}"}}
                     for recipe, check, error in report.internal_errors()]
    notifications += [{"level": "note", "message": {"text": f"{recipe.path}: not checked: declares "
                                                    f"{', '.join(recipe.other_gpus or [])}, not "
                                                    f"{', '.join(report.target_gpus)}"}}
                      for recipe in report.not_checked]
    notifications += [{"level": "note", "message": {"text": f"{recipe.path}::{check.name}: {check.skipped}"}}
                      for recipe, check in report.not_run()]
    notifications += [{"level": "note", "message": {"text": f"{path}: skipped, not a recipe: {why}"}}
                      for path, why in report.not_recipes]
    invocation = {"executionSuccessful": not any(True for _ in report.internal_errors())}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run = {
        "tool": {"driver": {"name": "recipe-checks", "version": report.version,
                            "rules": [_rule(rule) for rule in report.rules]}},
        "invocations": [invocation],
        "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri() + "/"}},
        "columnKind": "unicodeCodePoints",
        "results": results,
    }
    return json.dumps({"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)


def _rule(rule: type) -> dict:
    doc = rule.doc()
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": _first_sentence(_section(doc, "What it checks")) or rule.why},
        "fullDescription": {"text": " ".join(filter(None, (_section(doc, "What it checks"),
                                                          _section(doc, "Why it matters")))) or rule.why},
        "help": {"text": doc or rule.why, "markdown": doc or rule.why},
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {"tags": ["recipe-checks", rule.check], "check": rule.check, "why": rule.why},
    }


def _section(doc: str, heading: str) -> str:
    """The text under a `## heading` of a rule's docstring, as one paragraph."""
    lines: list[str] = []
    inside = False
    for line in doc.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip().lower() == heading.lower()
            continue
        if inside:
            lines.append(line.strip())
    return " ".join(part for part in lines if part)


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def _result(path: str, item: str, finding: Finding, index: dict[str, int], root: Path) -> dict:
    loc = finding.location
    artifact = _artifact_location(path, root)
    # code scanning places every result on a line: a finding about the whole file points at its first
    region: dict = {"startLine": max(loc.line, 1)}
    if loc.line and loc.column:
        region["startColumn"] = loc.column
        if loc.end_column > loc.column:
            region["endColumn"] = loc.end_column
    text = finding.message + (f"\nhelp: {finding.help}" if finding.help else "")
    result = {
        "ruleId": finding.rule_id,
        "level": LEVELS[finding.severity],
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": artifact, "region": region}}],
        "partialFingerprints": {"recipeChecks/v1": _fingerprint(artifact["uri"], finding)},
        "properties": {"check": item, "key": finding.key},
    }
    if finding.rule_id in index:
        result["ruleIndex"] = index[finding.rule_id]
    return result


def _artifact_location(path: str, root: Path) -> dict:
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(root)
    except ValueError:
        return {"uri": absolute.as_uri()}
    return {"uri": quote(PurePosixPath(*relative.parts).as_posix()), "uriBaseId": SRCROOT}


def _fingerprint(uri: str, finding: Finding) -> str:
    """Stable across line moves: the rule, the file, and the key it is about (the message where none)."""
    what = finding.key or finding.message
    return hashlib.sha256(f"{finding.rule_id}\0{uri}\0{what}".encode()).hexdigest()[:32]
