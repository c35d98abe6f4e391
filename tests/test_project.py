"""The project's settings (checks/project.py): `recipe-checks check` reads the recipe_checks_* values of the pytest
configuration file as the plugin does, so the two give one verdict on one project."""

from __future__ import annotations

import pytest

from recipe_checks import compat
from recipe_checks.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main
from recipe_checks.project import ProjectConfigError, project_settings
from tests.conftest import GOOD_RECIPE

UNPAGED = GOOD_RECIPE.replace("paged_adamw_8bit", "adamw_torch")  # RC301: an error, and the project's policy
RELAX = 'recipe_checks_ignore = ["RC301: our nodes have no host RAM to page into"]'


def test_the_command_line_relaxes_a_rule_the_project_relaxes_and_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(UNPAGED)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "recipes"]) == EXIT_FINDINGS  # no project settings yet
    (tmp_path / "pyproject.toml").write_text(f"[tool.pytest.ini_options]\n{RELAX}\n")
    capsys.readouterr()
    assert main(["check", "recipes"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "RC301" not in captured.out
    assert captured.err.strip() == ("recipe-checks: project settings (pyproject.toml): ignore RC301 (our nodes have "
                                    "no host RAM to page into)")
    assert main(["check", "recipes", "--isolated"]) == EXIT_FINDINGS  # as ruff's --isolated: no project settings
    assert "RC301" in capsys.readouterr().out


def test_the_setting_is_found_from_a_subdirectory_as_pytest_finds_it(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(f"[tool.pytest.ini_options]\n{RELAX}\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "r.yaml").write_text(UNPAGED)
    monkeypatch.chdir(tmp_path / "a")
    assert main(["check", "b/r.yaml", "-q"]) == EXIT_OK
    assert main(["estimate", "b/r.yaml", "--no-fixes", "--json"]) in (EXIT_OK, EXIT_FINDINGS)  # not refused for RC301


def test_pytest_and_the_command_line_give_one_verdict_on_one_project(pytester):
    pytester.makefile(".yaml", r=UNPAGED)
    pytester.makefile(".yaml", other=GOOD_RECIPE.replace("bf16: true", "fp16: true").replace(
        "compute_dtype: bfloat16", "compute_dtype: float16"))  # RC406: a warning, which strict fails
    for settings in ("", RELAX, f"{RELAX}\nrecipe_checks_strict = true"):
        pytester.makepyprojecttoml(f"[tool.pytest.ini_options]\n{settings}\n")
        result = pytester.runpytest(".", "-p", "no:cacheprovider", "-k", "optimizer or precision")
        command = main(["check", str(pytester.path)])
        assert (result.ret == 0) == (command == EXIT_OK), settings


def test_an_ini_file_strict_and_gpu_are_read_as_the_plugin_reads_them(tmp_path, monkeypatch, capsys):
    recipe = GOOD_RECIPE.replace("  gpu: rtx4090\n", "").replace("hardware:\n", "")
    fp16 = recipe.replace("bf16: true", "fp16: true").replace("compute_dtype: bfloat16", "compute_dtype: float16")
    (tmp_path / "r.yaml").write_text(fp16)  # RC406 on a GPU: a warning (fp16 on Llama), which strict fails
    monkeypatch.chdir(tmp_path)
    assert main(["check", "r.yaml", "--format", "json"]) == EXIT_OK  # no GPU: the precision check is not run
    (tmp_path / "pytest.ini").write_text("[pytest]\nrecipe_checks_gpu = t4\nrecipe_checks_strict = yes\n")
    capsys.readouterr()
    assert main(["check", "r.yaml", "--format", "json"]) == EXIT_FINDINGS
    assert "gpu t4" in capsys.readouterr().err
    assert main(["check", "r.yaml", "--gpu", "rtx4090", "--isolated"]) == EXIT_OK  # the flag wins over the file


@pytest.mark.parametrize(("name", "text", "says"), [
    ("pyproject.toml", "[tool.pytest.ini_options\n", "cannot read the project's pytest configuration"),
    ("pytest.ini", "[pytest]\nrecipe_checks_strict = maybe\n", "recipe_checks_strict = 'maybe': not a boolean"),
])
def test_an_unreadable_project_configuration_is_a_usage_error(tmp_path, monkeypatch, capsys, name, text, says):
    (tmp_path / "r.yaml").write_text(GOOD_RECIPE)
    (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "r.yaml"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize("shape", ["pytest-9-config-values", "pytest-8-plain-values"])
def test_both_shapes_of_pytests_config_search_are_read(tmp_path, monkeypatch, shape):
    """pytest 9 wraps each value in a ConfigValue and returns four items; pytest 8 returns plain values, three."""
    from _pytest.config import findpaths

    real = findpaths.locate_config

    def located(invocation_dir, args):
        rootdir, path, values, *rest = real(invocation_dir, args)
        if shape == "pytest-8-plain-values":
            return rootdir, path, {k: getattr(v, "value", v) for k, v in values.items()}
        return (rootdir, path, values, *rest)

    monkeypatch.setattr(findpaths, "locate_config", located)
    (tmp_path / "tox.ini").write_text("[pytest]\nrecipe_checks_ignore =\n    RC301: paging is off here\n    RC4\n")
    settings = project_settings([str(tmp_path)], tmp_path)
    assert settings.path == tmp_path / "tox.ini"
    assert settings.ignore == {"RC301": "paging is off here", "RC4": "ignored for the whole project"}
    path, values = compat.pytest_ini([str(tmp_path)], tmp_path)
    assert isinstance(values["recipe_checks_ignore"], str)


def test_a_bad_value_names_the_file(tmp_path):
    (tmp_path / "setup.cfg").write_text("[tool:pytest]\nrecipe_checks_strict = sometimes\n")
    with pytest.raises(ProjectConfigError, match=r"setup\.cfg: recipe_checks_strict = 'sometimes'"):
        project_settings([str(tmp_path)], tmp_path)
