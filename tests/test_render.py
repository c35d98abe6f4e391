"""Rendering: GitHub workflow-command annotations escape what would end or split the command."""

from __future__ import annotations

from recipe_checks.findings import Finding, Location, Severity
from recipe_checks.render import github_annotation


def _finding(path: str, message: str, help: str = "") -> Finding:
    return Finding(rule_id="RC201", message=message, location=Location(path, 8, 20, 35),
                   severity=Severity.ERROR, check="target-modules", help=help)


def test_a_path_with_commas_and_colons_stays_one_file_property():
    line = github_annotation(_finding("recipes/a,b:c.yaml", "target module 'x' matches nothing"))
    assert line == (
        "::error file=recipes/a%2Cb%3Ac.yaml,line=8,col=20,title=RC201 target-modules"
        "::target module 'x' matches nothing"
    )


def test_a_multi_line_message_stays_one_command_and_percent_is_escaped_first():
    line = github_annotation(_finding("r.yaml", "first line\r\nsecond: 100%, done", help="a\nb"))
    assert "\n" not in line and "\r" not in line
    # the message is one line already (a Finding escapes its controls: recipe_checks.shown); help keeps its newline,
    # which the workflow command escapes
    assert line.endswith("::first line\\r\\nsecond: 100%25, done -- help: a%0Ab")


def test_properties_split_back_into_the_values_written():
    path = "odd, dir/x:y%z.yaml"
    _, head, message = github_annotation(_finding(path, "m")).split("::")
    command, properties = head.split(" ", 1)
    values = dict(item.split("=", 1) for item in properties.split(","))
    assert (command, message) == ("error", "m")
    assert values["file"].replace("%2C", ",").replace("%3A", ":").replace("%25", "%") == path
    assert values["title"] == "RC201 target-modules"
