"""The junit format: JUnit XML as pytest's --junitxml writes it, one testcase per recipe x check.

classname is the recipe path with '/' as '.', name the check (the plugin's item name), so CI test
views list `recipes.llama3-8b-qlora-rtx4090.yaml` > `target-modules` as they do for the pytest run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from recipe_checks.render import render_finding
from recipe_checks.report.model import RecipeReport, RunReport

# What XML 1.0 cannot hold at all (a finding may quote a control character from a hostile file)
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def render(report: RunReport) -> str:
    suite = ET.Element("testsuite", name="recipe-checks")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for recipe in report.recipes:
        if not recipe.checked:
            _case(suite, recipe, "gpu-selection", totals).append(ET.Element("skipped", type="pytest.deselect", message=(
                f"not checked: declares {', '.join(recipe.other_gpus or [])}, not {', '.join(report.target_gpus)} "
                "(use --recipes-all-gpus)")))
            totals["skipped"] += 1
            continue
        if recipe.error is not None:
            _error(_case(suite, recipe, "(recipe)", totals), recipe.error, totals)
        for check in recipe.checks:
            case = _case(suite, recipe, check.name, totals)
            shown = "\n\n".join(render_finding(f, recipe.source_line(f.location.line)) for f in check.findings)
            if check.error is not None:
                _error(case, check.error, totals)
            elif check.failed:
                failing = [f for f in check.findings if f.is_error or report.strict]
                head = failing[0] if failing else check.findings[0]
                failure = ET.SubElement(case, "failure", message=f"{head.rule_id} {head.message}")
                failure.text = shown
                totals["failures"] += 1
            elif check.skipped:
                ET.SubElement(case, "skipped", type="pytest.skip", message=check.skipped)
                totals["skipped"] += 1
            if shown and not check.failed:
                ET.SubElement(case, "system-out").text = shown
    for path, why in report.not_recipes:  # a YAML file a search left out: a skipped case of its own
        _case(suite, RecipeReport(path), "not-a-recipe", totals).append(
            ET.Element("skipped", type="pytest.skip", message=f"skipped: {why}"))
        totals["skipped"] += 1
    for key, value in totals.items():
        suite.set(key, str(value))
    if report.seconds is not None:
        suite.set("time", f"{report.seconds:.3f}")
    for element in suite.iter():
        element.text = _xml_safe(element.text)
        for key, value in element.attrib.items():
            element.set(key, _xml_safe(value))
    root = ET.Element("testsuites", name="recipe-checks")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def _case(suite: ET.Element, recipe: RecipeReport, name: str, totals: dict[str, int]) -> ET.Element:
    totals["tests"] += 1
    return ET.SubElement(suite, "testcase", classname=recipe.path.replace("/", "."), name=name,
                         file=recipe.path)


def _error(case: ET.Element, error: str, totals: dict[str, int]) -> None:
    ET.SubElement(case, "error", message=f"internal error of recipe-checks: {error}").text = error
    totals["errors"] += 1


def _xml_safe(text: str | None) -> str | None:
    """As pytest's junitxml: a character XML cannot hold is written as #xNN."""
    return None if text is None else _NOT_XML.sub(lambda m: f"#x{ord(m.group()):02X}", text)
