"""GitHub Actions output of a pytest run: annotations within GitHub's limits, and a job summary table.

Items record what they found on their reports (`report.recipe_checks`, plain data that pytest-xdist
carries from its workers), so the process that prints the summary never re-runs a check.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from recipe_checks.findings import Finding, Location, Severity
from recipe_checks.render import github_annotation
from recipe_checks.rules import CHECKS, IGNORES_CHECK
from recipe_checks.shown import shown

# GitHub shows at most 10 warning, 10 error and 10 notice annotations per step, and 50 per job (all
# steps together); the others are dropped without a word (actions/toolkit, docs/problem-matchers.md,
# "Limitations"). One pytest step therefore emits 10 of each at most, then one notice saying what it left out.
ANNOTATIONS_PER_STEP = {Severity.ERROR: 10, Severity.WARNING: 10}
# A step summary is refused whole above 1024 KiB ("$GITHUB_STEP_SUMMARY upload aborted, supports content
# up to a size of 1024k"): the table and findings are cut well before that.
SUMMARY_MAX_BYTES = 900 * 1024
SUMMARY_MAX_FINDINGS = 200

ICONS = {"passed": "✅", "failed": "❌", "skipped": "⏭️", "crashed": "💥"}
# pytest-xdist reports an item whose worker process died under it with this phase (xdist.dsession.handle_crashitem):
# the item's own call report never comes, so its setup report, passed, must not stand for its verdict.
CRASH_PHASE = "???"
# RC601's message, fitting or not: "peak 5.1 GiB of the 22.8 GiB budget ..." / "peak 30.2 GiB does not fit the 22.8 GiB budget"
_VRAM = re.compile(r"peak (?P<peak>[\d.]+) GiB (?:of the|does not fit the) (?P<budget>[\d.]+) GiB budget")


def enabled(option: bool) -> bool:
    """Annotations are on under GitHub Actions (GITHUB_ACTIONS=true) or when asked for."""
    return option or os.environ.get("GITHUB_ACTIONS") == "true"


def finding_from_dict(data: dict) -> Finding:
    """The inverse of Finding.to_dict: findings travel from pytest-xdist workers as plain data."""
    return Finding(
        rule_id=data["rule"], message=data["message"], severity=Severity(data["severity"]),
        location=Location(data["path"], data["line"], data["column"]), key=data["key"], why=data["why"],
        help=data["help"], check=data["check"], details=tuple(data["details"]),
    )


def item_payload(path: str, check: str, gpu: str | None, result) -> dict:
    """What one recipe x check item reports for the summary: its failing findings and the vram figures."""
    payload: dict = {"path": path, "check": check, "gpu": gpu, "findings": [], "vram": None}
    if result is None:
        return payload
    payload["findings"] = [f.to_dict() for f in result.findings if f.severity is not Severity.INFO]
    for finding in result.findings + result.suppressed:
        match = _VRAM.search(finding.message) if finding.rule_id == "RC601" else None
        if match:
            payload["vram"] = {"peak_gib": float(match["peak"]), "budget_gib": float(match["budget"]),
                               "fits": finding.severity is Severity.INFO}
    return payload


def annotation_lines(findings: list[Finding]) -> list[str]:
    """Workflow commands for the findings: errors first, each text once, at most GitHub's per-step
    count of each level, then a notice saying how many were left out (the log and summary list them)."""
    ordered = sorted(findings, key=lambda f: (f.severity is not Severity.ERROR, f.location.path, f.location.line,
                                              f.rule_id))
    lines: list[str] = []
    shown = {level: 0 for level in ANNOTATIONS_PER_STEP}
    left_out = {level: 0 for level in ANNOTATIONS_PER_STEP}
    for finding in ordered:
        if finding.severity not in ANNOTATIONS_PER_STEP:
            continue
        line = github_annotation(finding)
        if line in lines:  # the same finding against several GPUs
            continue
        if shown[finding.severity] < ANNOTATIONS_PER_STEP[finding.severity]:
            shown[finding.severity] += 1
            lines.append(line)
        else:
            left_out[finding.severity] += 1
    if any(left_out.values()):
        counts = " and ".join(f"{n} {level.value}(s)" for level, n in left_out.items() if n)
        lines.append(f"::notice title=recipe-checks::{counts} not annotated: GitHub shows "
                     f"{ANNOTATIONS_PER_STEP[Severity.ERROR]} errors and {ANNOTATIONS_PER_STEP[Severity.WARNING]} "
                     "warnings per step; the job summary and the log list every finding")
    return lines


@dataclass
class ItemRecord:
    path: str
    check: str
    gpu: str | None
    outcome: str = "passed"
    findings: list[Finding] = field(default_factory=list)
    vram: dict | None = None


@dataclass
class RunRecord:
    """The recipe items' outcomes of one run, gathered from their reports (in order of arrival)."""

    items: dict[str, ItemRecord] = field(default_factory=dict)

    def add(self, nodeid: str, when: str, outcome: str, payload: dict) -> None:
        record = self.items.setdefault(nodeid, ItemRecord(payload["path"], payload["check"], payload["gpu"]))
        if when == CRASH_PHASE:
            record.outcome = "crashed"
        elif record.outcome == "crashed":
            pass
        elif outcome == "failed" or (outcome == "skipped" and record.outcome != "failed"):
            record.outcome = outcome
        if when == "call":
            record.findings = [finding_from_dict(d) for d in payload["findings"]]
            record.vram = payload["vram"] or record.vram

    def pytest_runtest_logreport(self, report) -> None:  # a pytest hook: this object is registered as a plugin
        payload = getattr(report, "recipe_checks", None)
        if payload is None and report.when == CRASH_PHASE:  # made by the controller, which has no item to ask
            payload = self._crash_payload(report.nodeid)
        if payload is not None:
            self.add(report.nodeid, report.when, report.outcome, payload)

    def _crash_payload(self, nodeid: str) -> dict | None:
        """A crashed item's payload from its node id (`path::check` or `path::check[gpu]`, recipe_checks.collect),
        when its worker died before it reported anything; None for an item that is not a recipe check."""
        if nodeid in self.items:
            record = self.items[nodeid]
            return item_payload(record.path, record.check, record.gpu, None)
        path, _, name = nodeid.rpartition("::")
        match = re.fullmatch(r"(?P<check>[^\[\]]+)(?:\[(?P<gpu>[^\]]+)\])?", name)
        if not path.endswith((".yaml", ".yml")) or match is None or match["check"] not in (*CHECKS, IGNORES_CHECK):
            return None
        return item_payload(path, match["check"], match["gpu"], None)

    def crashed(self) -> list[str]:
        """The node ids of the items whose pytest-xdist worker died while running them: they have no verdict."""
        return [nodeid for nodeid, record in self.items.items() if record.outcome == "crashed"]

    def findings(self) -> list[Finding]:
        return [f for record in self.items.values() for f in record.findings]

    def summary(self, *, unchanged: list[str] | tuple[str, ...] = (), ref: str | None = None, annotated: int = 0,
                warnings: list[str] | tuple[str, ...] = ()) -> str:
        """The markdown job summary: one row per recipe, one column per check, and the traced peak; `warnings`
        about the run itself (a GPU profile a user file redefined) under the counts."""
        order = {check: i for i, check in enumerate((*CHECKS, IGNORES_CHECK))}  # pytest's item order, not
        checks = sorted({r.check for r in self.items.values()}, key=lambda c: order.get(c, len(order)))  # xdist's
        by_recipe: dict[str, list[ItemRecord]] = {}
        for record in self.items.values():
            by_recipe.setdefault(record.path, []).append(record)
        counts = {o: sum(r.outcome == o for r in self.items.values()) for o in ICONS}
        lines = ["## recipe-checks", "",
                 f"{len(by_recipe)} recipe(s), {len(self.items)} check(s): " + ", ".join(
                     f"{n} {o}" for o, n in counts.items() if n) + "."]
        if unchanged:
            lines.append(f"{len(unchanged)} recipe(s) unchanged since {ref}, not checked.")
        lines += [f"\n> ⚠️ {_md(warning)}" for warning in warnings]
        lines += ["", "| recipe | " + " | ".join(checks) + " | traced peak / budget |",
                  "|---|" + "---|" * len(checks) + "---|"]
        for path, records in sorted(by_recipe.items()):
            cells = []
            for check in checks:
                parts = [_cell(r, several=sum(x.check == check for x in records) > 1)
                         for r in records if r.check == check]
                cells.append(" ".join(parts) or "–")
            vram = ", ".join(
                f"{'' if r.vram['fits'] else '❌ '}{r.vram['peak_gib']:.1f} / {r.vram['budget_gib']:.1f} GiB"
                + (f" ({r.gpu})" if r.gpu else "") for r in records if r.vram
            )
            lines.append(f"| {_code(path)} | " + " | ".join(cells) + f" | {vram or '–'} |")
        crashed = self.crashed()
        if crashed:
            lines += ["", f"### Crashed ({len(crashed)})", ""]
            lines += [f"- 💥 {_code(nodeid)}: its pytest-xdist worker crashed while running it; the check has no "
                      "verdict; run it alone, without -n, to see the crash" for nodeid in crashed]
        findings = [f for f in self.findings() if f.severity is Severity.ERROR] + [
            f for f in self.findings() if f.severity is Severity.WARNING]
        if findings:
            lines += ["", f"### Findings ({len(findings)}; {annotated} annotated on the files)", ""]
            for finding in findings[:SUMMARY_MAX_FINDINGS]:
                icon = "❌" if finding.is_error else "⚠️"
                lines.append(f"- {icon} {_code(str(finding.location))} **{finding.rule_id}** {_md(finding.message)}"
                             + (f" — help: {_md(finding.help)}" if finding.help else ""))
            if len(findings) > SUMMARY_MAX_FINDINGS:
                lines.append(f"- … and {len(findings) - SUMMARY_MAX_FINDINGS} more: see the log")
        text = "\n".join(lines) + "\n"
        if len(text.encode()) > SUMMARY_MAX_BYTES:
            text = text.encode()[:SUMMARY_MAX_BYTES].decode(errors="ignore").rsplit("\n", 1)[0]
            text += "\n\n(cut to stay under GitHub's 1 MiB step summary limit: see the log)\n"
        return text


def _cell(record: ItemRecord, several: bool) -> str:
    rules = sorted({f.rule_id for f in record.findings if record.outcome == "failed"})
    text = ICONS[record.outcome] + (f" {record.gpu}" if several and record.gpu else "")
    if record.outcome == "crashed":
        return text + " crashed"
    return text + (f" {', '.join(rules)}" if rules else "")


_MARKDOWN = re.compile(r"([\\`*_\[\]<>!|#~&])")


def _md(text: str) -> str:
    """Prose as markdown shows it literally: control characters escaped (recipe_checks.shown) and each character
    that could start emphasis, a link, an image, HTML or a table cell behind a backslash."""
    return _MARKDOWN.sub(r"\\\1", shown(text))


def _code(text: str) -> str:
    """A path as a markdown code span, whatever it holds: its backticks inside a longer fence, its '|' escaped
    (a table splits cells before it reads code spans), control characters escaped."""
    text = shown(text).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def write_summary(text: str, env: dict[str, str] | None = None) -> Path | None:
    """Append to the file $GITHUB_STEP_SUMMARY names (None: not set, nothing written)."""
    target = (env if env is not None else os.environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(text)
    return Path(target)
