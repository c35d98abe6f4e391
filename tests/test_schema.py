"""The published JSON Schema accepts exactly what the loader accepts: every shipped recipe and docs
example, the string forms the README documents, and none of the corpus files the loader rejects."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from recipe_checks.cli import EXIT_OK, main
from recipe_checks.recipe.jsonschema import SHIPPED_SCHEMA, recipe_json_schema
from recipe_checks.recipe.load import RecipeLoadError, load_text, looks_like_recipe
from recipe_checks.recipe.validate import validate
from tests.conftest import CORPUS, RECIPES, REPO
from tests.test_cli import _pinned

SHIPPED = json.loads(SHIPPED_SCHEMA.read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SHIPPED)
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def schema_errors(data) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in VALIDATOR.iter_errors(data)]


def loader_accepts(text: str, name: str = "r.yaml") -> bool:
    result = validate(load_text(text, name))
    return result.ok


def documented_recipes() -> list[tuple[str, str]]:
    """(name, text) of every shipped recipe, docs example and recipe-shaped YAML block in the docs."""
    out = [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8"))
           for p in sorted(RECIPES.glob("*.yaml")) + sorted((REPO / "docs" / "examples").glob("*.yaml"))]
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]:
        for i, block in enumerate(YAML_BLOCK.findall(doc.read_text(encoding="utf-8"))):
            if looks_like_recipe(block):
                out.append((f"{doc.relative_to(REPO)} yaml block {i + 1}", block))
    return out


def test_the_shipped_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SHIPPED)
    assert SHIPPED["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_shipped_schema_names_the_pinned_libraries_it_was_generated_with():
    for distribution in ("pydantic", "transformers", "peft"):
        assert f"{distribution} {_pinned(distribution)}" in SHIPPED["$comment"], SHIPPED["$comment"]


def test_the_shipped_schema_is_the_one_generated_from_the_pinned_libraries():
    import importlib.metadata

    installed = {d: importlib.metadata.version(d) for d in ("pydantic", "transformers", "peft")}
    pinned = {d: _pinned(d) for d in installed}
    if installed != pinned:  # each release words its schema (and its kwargs) a little differently
        pytest.skip(f"the shipped schema is generated with {pinned} (ci/constraints.txt); installed: {installed}")
    assert SHIPPED == recipe_json_schema(), (
        "regenerate: recipe-checks schema --installed -o checks/schema/recipe.schema.json")


def test_schema_command_prints_the_shipped_schema_without_importing_torch(tmp_path):
    out = tmp_path / "schema.json"
    code = (
        "import sys\nfrom recipe_checks.cli import main\n"
        f"code = main(['schema', '-o', {str(out)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "[]"], done.stdout
    assert out.read_text(encoding="utf-8") == SHIPPED_SCHEMA.read_text(encoding="utf-8")


def test_schema_installed_generates_from_the_installed_libraries(tmp_path, capsys):
    assert main(["schema", "--installed"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == recipe_json_schema()


@pytest.mark.parametrize("name,text", documented_recipes(), ids=[n for n, _ in documented_recipes()])
def test_every_shipped_recipe_and_docs_example_validates(name, text):
    assert loader_accepts(text, name), f"{name} does not load"
    assert schema_errors(yaml.safe_load(text)) == []


def test_the_documented_string_forms_are_among_the_examples():
    # the forms an editor flagged before: without them the test above proves less
    texts = [text for _, text in documented_recipes()]
    assert any(isinstance(yaml.safe_load(t)["model"], str) for t in texts)
    assert any(isinstance((yaml.safe_load(t).get("hardware") or {}).get("gpu"), str) for t in texts)
    assert any(isinstance((yaml.safe_load(t).get("hardware") or {}).get("gpu"), list) for t in texts)


def _corpus_cases():
    return [pytest.param(p, id=p.stem) for p in sorted(CORPUS.glob("*.yaml"))]


@pytest.mark.parametrize("path", _corpus_cases())
def test_the_schema_rejects_exactly_the_corpus_files_the_loader_rejects(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        loaded = load_text(text, path.name)
    except RecipeLoadError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return  # not YAML at all: no document for a schema to judge
        assert schema_errors(data), f"{path.name}: the loader refuses it, the schema accepts {data!r}"
        return
    result = validate(loaded)
    problems = [u.key_path for u in result.unknown_keys] + [(v.key_path, v.message) for v in result.invalid_values]
    errors = schema_errors(loaded.data)
    if result.ok:
        assert errors == [], f"{path.name}: the loader accepts it"
    else:
        assert errors, f"{path.name}: the loader rejects it ({problems}), the schema accepts it"


def test_the_corpus_has_files_the_loader_rejects_for_shape():
    rejected = []
    for path in sorted(CORPUS.glob("*.yaml")):
        try:
            if not validate(load_text(path.read_text(encoding="utf-8"), path.name)).ok:
                rejected.append(path.name)
        except (RecipeLoadError, UnicodeDecodeError):
            continue
    assert len(rejected) >= 10, rejected


SHAPES = [
    ("model: org/name\n", True),
    ("model: {id: org/name, revision: main}\n", True),
    ("model: {config: ./config.json}\n", True),
    ("model: ''\n", False),
    ("model: {revision: main}\n", False),
    ("model: {id: null, config: null}\n", False),
    ("model: [org/name]\n", False),
    ("model: org/name\nhardware: {gpu: rtx4090}\n", True),
    ("model: org/name\nhardware: {gpu: [rtx4090, a100-80gb]}\n", True),
    ("model: org/name\nhardware: {gpu: []}\n", False),
    ("model: org/name\nhardware: {gpu: 4090}\n", False),
    ("model: org/name\nx-base: {r: 8}\n", True),
    ("modle: org/name\n", False),
    ("model: org/name\ntraining: {learning_rate: 2e-4}\n", False),
    ("model: org/name\ntraining: {learning_rate: 2.0e-4, logging_steps: 10}\n", True),
    ("model: org/name\ntraining: {max_steps: 0}\n", False),
    ("model: org/name\ntraining: {warmup_steps: -1}\n", False),
    ("model: org/name\ntraining: {warmup_steps: 0.1}\n", True),
    ("model: org/name\ntraining: {warmup_ratio: 0.1}\n", False),  # transformers 5.24 dropped it
    ("model: org/name\ntraining: {lerning_rate: 0.1}\n", False),
    ("model: org/name\nlora: {target_modules: ['']}\n", False),
    ("model: org/name\nlora: {target_modules: all-linear, init_lora_weights: gaussian}\n", True),
    ("model: org/name\nlora: {layers_to_transform: [-1]}\n", False),
    ("model: org/name\nlora: {layers_to_transform: 3}\n", True),
    ("model: org/name\nquantization: null\nlora: null\n", True),
    ("model: org/name\nquantization: {load_in_4bit: 'true'}\n", False),
    ("model: org/name\nchecks: {ignore: {RC301: ' '}}\n", False),
    ("model: org/name\nchecks: {ignore: {RC301: because}}\n", True),
    # mappings the library passes on as keyword arguments: torch.utils.checkpoint.checkpoint's, Liger's kernel flags
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {use_reentrant: false}}\n", True),
    (("model: org/name\ntraining: {gradient_checkpointing_kwargs: {use_reentrant: null, preserve_rng_state: false, "
      "determinism_check: none, debug: false, early_stop: true}}\n"), True),
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {}}\n", True),
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {use_reentrant: [1, {a: b}], foo: .nan}}\n", False),
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {use_reentrant: 'false'}}\n", False),
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {use_reentrent: false}}\n", False),
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {determinism_check: 0}}\n", False),
    ("model: org/name\ntraining: {gradient_checkpointing_kwargs: {context_fn: noop_context_fn}}\n", False),
    ("model: org/name\ntraining: {use_liger_kernel: true, liger_kernel_config: {rope: false, swiglu: true}}\n", True),
    ("model: org/name\ntraining: {use_liger_kernel: true, liger_kernel_config: null}\n", True),
    ("model: org/name\ntraining: {liger_kernel_config: [1, 2]}\n", False),
    ("model: org/name\ntraining: {liger_kernel_config: {rope: 0}}\n", False),
    ("model: org/name\ntraining: {liger_kernel_config: {rms_norms: false}}\n", False),
]


@pytest.mark.parametrize("text,accepted", SHAPES, ids=[t.strip().replace("\n", " | ") for t, _ in SHAPES])
def test_schema_and_loader_agree_on_each_shape(text, accepted):
    assert loader_accepts(text) is accepted
    assert (schema_errors(yaml.safe_load(text)) == []) is accepted, schema_errors(yaml.safe_load(text))
