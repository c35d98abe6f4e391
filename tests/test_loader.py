"""Loading recipes: positions for every key, duplicate keys, and no crash on any input (hypothesis)."""

from __future__ import annotations

import pytest
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


# -- mappings the training section's library passes on as keyword arguments ------------------------------
ISSUE_RECIPE = (
    "model: a\n"
    "training:\n"
    "  gradient_checkpointing: true\n"
    "  gradient_checkpointing_kwargs: {use_reentrant: [1, {a: b}], foo: .nan}\n"
    "  liger_kernel_config: [1, 2]\n"
)


def _validate(text: str):
    return validate(load_text(text, "r.yaml"))


def test_nested_keyword_mappings_are_checked_key_by_key():
    result = _validate(ISSUE_RECIPE)
    assert [u.key_path for u in result.unknown_keys] == [("training", "gradient_checkpointing_kwargs", "foo")]
    assert sorted(v.key_path for v in result.invalid_values) == [
        ("training", "gradient_checkpointing_kwargs", "use_reentrant"), ("training", "liger_kernel_config")]
    assert result.broken == {"training": "has an invalid value"}


def test_gradient_checkpointing_kwargs_take_the_arguments_of_the_installed_torch_checkpoint():
    import inspect

    from torch.utils.checkpoint import checkpoint

    [unknown] = _validate("model: a\ntraining:\n  gradient_checkpointing_kwargs: {use_reentrent: false}\n").unknown_keys
    keyword_only = {n for n, p in inspect.signature(checkpoint).parameters.items() if p.kind == p.KEYWORD_ONLY}
    assert keyword_only | {"preserve_rng_state"} <= set(unknown.known)  # preserve_rng_state: documented **kwargs


def test_each_checkpoint_argument_the_loader_takes_is_one_torch_checkpoints_with():
    # a value of its type for every argument the loader takes: torch must run with all of them (a name it
    # does not take would reach the checkpointed function, which takes none, and fail)
    import torch
    from torch.utils.checkpoint import checkpoint

    from recipe_checks.recipe.library import checkpoint_keywords

    samples = {bool: False, str: "none", int: 1}
    kwargs = {name: samples[kw.types[0]] for name, kw in checkpoint_keywords().items()
              if kw.receiver == "torch.utils.checkpoint.checkpoint" and kw.types}
    kwargs["use_reentrant"] = False
    text = "model: a\ntraining:\n  gradient_checkpointing_kwargs: " + yaml.safe_dump(kwargs, default_flow_style=True)
    assert _validate(text).ok
    x = torch.ones(2, requires_grad=True)
    checkpoint(lambda t: t * 2, x, **kwargs).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_an_unknown_key_in_a_passed_on_mapping_drops_only_that_key():
    result = _validate(
        "model: a\ntraining:\n  gradient_checkpointing_kwargs: {use_reentrant: true, use_reentrent: false}\n")
    assert [u.key_path[-1] for u in result.unknown_keys] == ["use_reentrent"]
    assert result.recipe.training.gradient_checkpointing_kwargs == {"use_reentrant": True}
    assert "training" not in result.broken


def test_transformers_own_checkpointing_arguments_pass_where_the_installed_trainer_takes_them_out():
    from transformers import PreTrainedModel

    takes = hasattr(PreTrainedModel, "activation_checkpointing_enable")  # transformers 5.24 on
    text = ("model: a\ntraining:\n"
            "  gradient_checkpointing_kwargs: {every_n_layers: 2, offload: true, use_reentrant: false}\n")
    assert _validate(text).ok is takes
    if takes:
        [problem] = _validate(text.replace("every_n_layers: 2", "every_n_layers: 2.5")).invalid_values
        assert problem.key_path == ("training", "gradient_checkpointing_kwargs", "every_n_layers")


def test_activation_checkpointing_kwargs_are_checked_as_gradient_checkpointing_kwargs():
    from recipe_checks.recipe.library import section_keys

    if "activation_checkpointing_kwargs" not in section_keys("training"):
        pytest.skip("activation_checkpointing_kwargs needs transformers 5.24 or later (TrainingArguments' new name)")
    assert _validate("model: a\ntraining:\n  activation_checkpointing_kwargs: {use_reentrant: false}\n").ok
    result = _validate("model: a\ntraining:\n  activation_checkpointing_kwargs: {use_reentrant: 1, fo: 2}\n")
    mapping = ("training", "activation_checkpointing_kwargs")
    assert [u.key_path for u in result.unknown_keys] == [(*mapping, "fo")]
    assert [v.key_path for v in result.invalid_values] == [(*mapping, "use_reentrant")]
    [problem] = _validate("model: a\ntraining:\n  activation_checkpointing_kwargs: 3\n").invalid_values
    assert problem.key_path == mapping and "must be a mapping" in problem.message


def test_a_callable_checkpoint_argument_is_refused_with_its_reason():
    text = "model: a\ntraining:\n  gradient_checkpointing_kwargs: {context_fn: noop_context_fn}\n"
    [problem] = _validate(text).invalid_values
    assert problem.key_path[-1] == "context_fn" and "Python function" in problem.message


def test_liger_kernel_config_takes_the_kernel_flags_of_liger():
    from recipe_checks.recipe.library import LIGER_DATA

    flags = yaml.safe_load(LIGER_DATA.read_text(encoding="utf-8"))["kernel_flags"]
    assert {"fused_linear_cross_entropy", "rope", "rms_norm", "swiglu"} <= set(flags)
    every = "{" + ", ".join(f"{flag}: false" for flag in flags) + "}"
    assert _validate(f"model: a\ntraining:\n  use_liger_kernel: true\n  liger_kernel_config: {every}\n").ok
    result = _validate("model: a\ntraining:\n  liger_kernel_config: {rms_norms: false, rope: 1}\n")
    [unknown] = result.unknown_keys
    assert unknown.key_path == ("training", "liger_kernel_config", "rms_norms") and "rms_norm" in unknown.known
    assert [v.key_path for v in result.invalid_values] == [("training", "liger_kernel_config", "rope")]
    [problem] = _validate("model: a\ntraining:\n  liger_kernel_config: [1, 2]\n").invalid_values
    assert "mapping of Liger kernel flags" in problem.message and problem.value == [1, 2]


@given(st.fixed_dictionaries({}, optional={
    "use_reentrant": st.one_of(st.booleans(), st.none()),
    "preserve_rng_state": st.booleans(),
    "determinism_check": st.sampled_from(["default", "none"]),
    "debug": st.booleans(),
    "early_stop": st.booleans(),
}))
@settings(max_examples=50, deadline=None)
def test_any_checkpoint_arguments_of_their_documented_types_validate(kwargs):
    text = "model: a\ntraining:\n  gradient_checkpointing_kwargs: " + yaml.safe_dump(kwargs, default_flow_style=True)
    result = _validate(text)
    assert result.ok, (result.unknown_keys, result.invalid_values)
    assert result.recipe.training.gradient_checkpointing_kwargs == kwargs


def test_a_long_chat_template_loads_and_a_longer_one_is_cut_not_refused():
    from recipe_checks.limits import MAX_STRING_CHARS, MAX_TEXT_CHARS

    for length, kept in ((20_000, 20_000), (MAX_TEXT_CHARS + 5_000, MAX_TEXT_CHARS)):
        loaded = load_text(f"model: a\nchat_template: {'x' * length}\n", "r.yaml")
        assert len(loaded.data["chat_template"]) == kept
    with pytest.raises(RecipeLoadError) as info:  # a value the checks read keeps its limit
        load_text(f"model: a\ntraining:\n  optim: {'x' * (MAX_STRING_CHARS + 1)}\n", "r.yaml")
    assert info.value.finding.rule_id == "RC101"


def test_an_alias_of_a_long_chat_template_under_a_read_key_is_still_refused():
    text = f"model: a\nchat_template: &t {'x' * 10_000}\ntraining:\n  optim: *t\n"
    with pytest.raises(RecipeLoadError) as info:
        load_text(text, "r.yaml")
    assert info.value.finding.rule_id == "RC101"
