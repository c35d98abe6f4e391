"""Loading recipes: positions for every key, duplicate keys, and no crash on any input (hypothesis)."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from recipe_checks.recipe.load import RecipeLoadError, load_text, looks_like_recipe
from recipe_checks.recipe.validate import validate

keys = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(
    lambda k: k not in ("y", "n", "yes", "no", "on", "off", "true", "false", "null")
)
scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text("abcxyz_-", min_size=1, max_size=8))
mappings = st.recursive(
    st.dictionaries(keys, scalars, min_size=1, max_size=4),
    lambda children: st.dictionaries(keys, st.one_of(scalars, children, st.lists(scalars, max_size=3)), min_size=1, max_size=4),
    max_leaves=12,
)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_loads_or_gives_an_rc101_finding(text):
    try:
        loaded = load_text(text, "r.yaml")
    except RecipeLoadError as exc:
        assert exc.finding.rule_id == "RC101"
        assert exc.finding.location.line >= 1
        return
    validate(loaded)  # never raises, whatever the mapping holds


@given(mappings)
@settings(max_examples=200, deadline=None)
def test_every_key_is_located_on_its_own_line(data):
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    loaded = load_text(text, "r.yaml")
    assert loaded.data == data
    lines = text.splitlines()

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                span = loaded.key_spans[(*path, key)]
                assert lines[span.line - 1][span.column - 1:].startswith(key)
                walk(value, (*path, key))

    walk(data, ())


def test_duplicate_keys_are_kept_for_rc108():
    loaded = load_text("model: a\ntraining:\n  bf16: true\n  bf16: false\n", "r.yaml")
    assert loaded.duplicate_keys == [("training", "bf16")]
    assert loaded.data["training"]["bf16"] is False


def test_location_falls_back_to_the_nearest_parent():
    loaded = load_text("model: a\ntraining:\n  bf16: true\n", "r.yaml")
    assert loaded.location(("training", "optim")).line == 2


def test_a_top_level_list_is_not_a_recipe():
    try:
        load_text("- model: a\n", "r.yaml")
    except RecipeLoadError as exc:
        assert "mapping" in exc.finding.message
    else:
        raise AssertionError("a list loaded as a recipe")


def test_unsafe_yaml_tags_are_refused():
    try:
        load_text("model: !!python/object/apply:os.system ['echo pwned']\n", "r.yaml")
    except RecipeLoadError as exc:
        assert exc.finding.rule_id == "RC101"
    else:
        raise AssertionError("a python tag was constructed")


def test_marker_key_detection_survives_broken_yaml():
    assert looks_like_recipe("model: x\n lora: [\n")
    assert not looks_like_recipe("jobs:\n  model: x\n")
