"""The json format, for tools: every finding with its place, the recipes checked and not, each check's outcome.

Keys kept from the first version: recipes, not_checked, findings, internal_errors, failed.
"""

from __future__ import annotations

import json

from recipe_checks.report.model import RunReport


def render(report: RunReport) -> str:
    return json.dumps({
        "version": report.version,
        "recipes": [r.path for r in report.checked],
        "inputs": {r.path: r.inputs for r in report.checked},  # the files each reads besides itself
        "not_checked": [{"path": r.path, "gpus": r.other_gpus} for r in report.not_checked],
        "findings": [{**f.to_dict(), "gpu": check.gpu} for _, check, f in report.findings()],
        "internal_errors": [{"path": r.path, "check": c.check if c else None, "error": e}
                            for r, c, e in report.internal_errors()],
        "checks": [{"path": r.path, "check": c.check, "name": c.name, "gpu": c.gpu, "outcome": c.outcome,
                    "skipped": c.skipped, "waiting": c.waiting} for r in report.recipes for c in r.checks],
        "checks_partly_run": len(report.partly_run()),  # passed, with rules that could not run ("waiting")
        "summary": report.counts(),
        "checks_not_run": len(report.not_run()),  # each in "checks" with outcome "skipped" and its reason
        "not_recipes": [{"path": path, "reason": why} for path, why in report.not_recipes],  # YAML files left out
        "with_vram": report.with_vram,
        "rules": [r.id for r in report.rules],
        "changed_since": report.changed_since,
        "unchanged": report.unchanged,
        "failed": report.failed,
    }, indent=2)
