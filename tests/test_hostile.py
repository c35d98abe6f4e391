"""Hostile and malformed input: every case ends in a finding, in bounded time and memory, never a crash.

The corpus is tests/hostile/ plus the cases that cannot be committed as files (a FIFO, a symlink loop,
/dev/zero, sparse multi-GB files, a 50 MB file), made in tmp_path. CASES is the manifest: each case,
how it is made, and the rule ids it must produce. `python tests/test_hostile.py --measure` runs each
case in its own process and prints the time and peak RSS figures quoted in the README.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

HOSTILE = Path(__file__).resolve().parent / "hostile"
REPO = HOSTILE.parent.parent

# Bounds asserted per case. They guard a hang or a blow-up, not speed: the measured figures
# (README, "Limits on input") are far below them, and a loaded CI machine must not flake.
CASE_SECONDS = 60
CASE_RSS_BYTES = 2 * 1024**3
MESSAGE_CHARS = 1000  # a finding's message, help and why together: values are quoted shortened

VALID = """\
model: HuggingFaceTB/SmolLM2-135M
lora:
  r: 8
  lora_alpha: 16
  target_modules: [q_proj, v_proj]
training:
  per_device_train_batch_size: 1
  learning_rate: 2.0e-4
  max_seq_length: 256
hardware:
  gpu: rtx4090
"""


@dataclass(frozen=True)
class Case:
    name: str
    expect: frozenset[str]  # rule ids that must be reported (empty with `loads`: the file must load)
    made: str  # how the input is made
    make: Callable[[Path], Path] | None = None  # builds it under a temp dir; None: tests/hostile/<name>.yaml
    loads: bool = False  # a valid recipe in an unusual form: no RC101, no RC103
    keys: frozenset[str] = frozenset()  # dotted keys that must each have a finding of their own

    def path(self, tmp: Path) -> Path:
        return self.make(tmp) if self.make else HOSTILE / f"{self.name}.yaml"


def _recipe_with_config(tmp: Path, config: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(VALID.replace("model: HuggingFaceTB/SmolLM2-135M", f"model: {{id: hostile, config: '{config}'}}"))
    return path


def _fifo(tmp: Path, name: str) -> Path:
    os.mkfifo(tmp / name)
    return tmp / name


def _loop(tmp: Path, name: str) -> Path:
    os.symlink(name, tmp / name)
    return tmp / name


def _sparse(tmp: Path, name: str, size: int = 2 * 1024**3) -> Path:
    with open(tmp / name, "wb") as f:
        f.truncate(size)
    return tmp / name


def _fifo_config(tmp: Path) -> Path:
    _fifo(tmp, "config.json")
    return _recipe_with_config(tmp, "config.json")


def _loop_config(tmp: Path) -> Path:
    _loop(tmp, "config.json")
    return _recipe_with_config(tmp, "config.json")


def _loop_model_dir(tmp: Path) -> Path:
    _loop(tmp, "model-dir")
    path = tmp / "recipe.yaml"
    path.write_text(VALID.replace("HuggingFaceTB/SmolLM2-135M", "./model-dir"))
    return path


def _sparse_config(tmp: Path) -> Path:
    _sparse(tmp, "config.json")
    return _recipe_with_config(tmp, "config.json")


def _big_config(tmp: Path) -> Path:
    (tmp / "config.json").write_text('{"model_type": "llama", "pad": "' + "x" * 50_000_000 + '"}')
    return _recipe_with_config(tmp, "config.json")


def _big_recipe(tmp: Path) -> Path:
    path = tmp / "big.yaml"
    path.write_text(VALID + ("# padding\n" * 5_000_000))  # 50 MB
    return path


def _directory_recipe(tmp: Path) -> Path:
    (tmp / "dir.yaml").mkdir()
    return tmp / "dir.yaml"


def _mib_key(tmp: Path) -> Path:
    path = tmp / "key.yaml"
    path.write_text(VALID + "checks:\n  ignore:\n    ? " + "k" * 1_000_000 + "\n    : why\n")
    return path


def _many_targets(tmp: Path) -> Path:
    path = tmp / "targets.yaml"
    names = ", ".join(f"m{i}" for i in range(100_000))
    path.write_text(VALID.replace("[q_proj, v_proj]", f"[{names}]"))
    return path


def _ten_million_layers(tmp: Path) -> Path:
    path = tmp / "layers.yaml"
    path.write_text(VALID + "  layers_to_transform: [" + "0," * 10_000_000 + "0]\n")
    return path


def _written(name: str, text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_text(text)
        return tmp / name
    return make


def _case(name: str, expect: str, made: str, make: Callable[[Path], Path] | None = None, loads: bool = False,
          keys: tuple[str, ...] = ()) -> Case:
    return Case(name, frozenset(expect.split()), made, make, loads, frozenset(keys))


# The numeric keys tests/hostile/*-every-numeric-key.yaml set, typed by the schema or passed to the library.
NUMERIC_KEYS = (
    "quantization.llm_int8_threshold", "lora.r", "lora.lora_alpha", "lora.lora_dropout",
    *(f"training.{k}" for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                                "num_train_epochs", "max_steps", "warmup_ratio", "warmup_steps", "weight_decay",
                                "max_grad_norm", "max_seq_length", "seed", "adam_beta1")),
    "hardware.vram_budget_gib", "expect.tokens_per_second",
)


CASES = [
    # YAML structure
    _case("alias-bomb-lists", "RC101", "file: nine levels of ten list aliases (10^9 nodes expanded)"),
    _case("alias-bomb-mappings", "RC101", "file: eleven levels of mappings of six aliases, merged with <<"),
    _case("alias-recursive", "RC101", "file: an anchor holding an alias of itself"),
    _case("deep-nesting-flow", "RC101", "file: 10,000 nested flow lists"),
    _case("deep-nesting-block", "RC101", "file: 40 nested block mappings"),
    _case("python-object-tag", "RC101", "file: !!python/object/apply:os.system"),
    _case("python-name-tag", "RC101", "file: !!python/name:os.system"),
    _case("duplicate-int-bool-keys", "RC108", "file: keys 1 and true (one key once loaded)"),
    _case("duplicate-int-str-keys", "RC108", "file: keys 1 and '1' (one key once stringified)"),
    _case("duplicate-hex-float-keys", "RC108", "file: keys 0x10 and 16.0"),
    _case("long-key", "RC101", "file: a 1,000-character key"),
    _case("long-value", "RC101", "file: a 10,000-character value"),
    _case("key-1mib", "RC101", "generated: an explicit (?) key of 1,000,000 characters", _mib_key),
    # encodings and bytes
    _case("latin1", "RC101", "file: Latin-1 text (not UTF-8)"),
    _case("nul-byte", "RC101", "file: a NUL byte in a value"),
    _case("binary", "RC101", "file: 1 KiB of every byte value"),
    _case("utf16-without-bom", "RC101", "file: UTF-16 without a byte-order mark"),
    _case("valid-utf8-bom", "", "file: a valid recipe with a UTF-8 BOM", loads=True),
    _case("valid-utf16-bom", "", "file: a valid recipe in UTF-16 with its BOM", loads=True),
    _case("valid-utf32-bom", "", "file: a valid recipe in UTF-32 with its BOM", loads=True),
    # files that are not files
    _case("fifo-recipe", "RC101", "generated: the recipe is a FIFO", lambda t: _fifo(t, "fifo.yaml")),
    _case("dev-zero-recipe", "RC101", "the recipe path is /dev/zero", lambda t: Path("/dev/zero")),
    _case("symlink-loop-recipe", "RC101", "generated: the recipe is a symlink to itself", lambda t: _loop(t, "loop.yaml")),
    _case("sparse-2gib-recipe", "RC101", "generated: a 2 GiB sparse recipe", lambda t: _sparse(t, "sparse.yaml")),
    _case("big-50mb-recipe", "RC101", "generated: a 50 MB recipe (a valid one padded with comments)", _big_recipe),
    _case("directory-recipe", "RC101", "generated: the recipe path is a directory", _directory_recipe),
    _case("fifo-config", "RC106", "generated: model.config is a FIFO", _fifo_config),
    _case("dev-zero-config", "RC106", "model.config: /dev/zero", lambda t: _recipe_with_config(t, "/dev/zero")),
    _case("symlink-loop-config", "RC106", "generated: model.config is a symlink to itself", _loop_config),
    _case("symlink-loop-model-dir", "RC106", "generated: the model id is a local path that loops", _loop_model_dir),
    _case("sparse-2gib-config", "RC106", "generated: a 2 GiB sparse config.json", _sparse_config),
    _case("big-50mb-config", "RC106", "generated: a 50 MB config.json", _big_config),
    # values
    _case("inf-every-numeric-key", "RC103", "file: .inf in every numeric key, typed or a library kwarg", keys=NUMERIC_KEYS),
    _case("nan-every-numeric-key", "RC103", "file: .nan in every numeric key", keys=NUMERIC_KEYS),
    _case("negative-inf-every-numeric-key", "RC103", "file: -.inf in every numeric key", keys=NUMERIC_KEYS),
    _case("huge-float-every-numeric-key", "RC103", "file: 1e308 in every numeric key"),
    _case("huge-int-every-numeric-key", "RC103", "file: a 40-digit integer in every numeric key"),
    _case("trace-cost-micro-batch", "RC103", "file: batch 65,536 x 10^7 tokens"),
    _case("seed-beyond-numpy", "RC103", "file: seed 2**32"),
    _case("nested-list-values", "RC103", "file: nested lists for target_modules"),
    _case("target-modules-2000", "RC103", "file: 2,000 target_modules"),
    _case("target-modules-100k", "RC101", "generated: 100,000 target_modules (past the node limit)", _many_targets),
    _case("layers-to-transform-5000", "RC103", "file: 5,000 layers_to_transform"),
    _case("layers-to-transform-huge-index", "RC103", "file: layer index 10^9"),
    _case("layers-to-transform-10m", "RC101", "generated: 10^7 layers_to_transform (20 MB)", _ten_million_layers),
    # regexes peft would match
    _case("regex-nested-quantifier-target-modules", "RC103", "file: target_modules '(\\w+)*_proj'"),
    _case("regex-overlapping-alternation-target-modules", "RC103", "file: target_modules '(q|q_)*proj'"),
    _case("regex-invalid-target-modules", "RC103", "file: target_modules '[q_proj'"),
    _case("regex-polynomial-exclude-modules", "RC103", "file: exclude_modules with six unbounded repeats"),
    _case("regex-catastrophic-rank-pattern", "RC103", "file: rank_pattern key '(.*)*q_proj'"),
    _case("regex-invalid-rank-pattern", "RC103", "file: rank_pattern key 'q_proj('"),
    _case("regex-catastrophic-alpha-pattern", "RC103", "file: alpha_pattern key '(v|v_)+proj'"),
    _case("regex-invalid-layers-pattern", "RC103", "file: layers_pattern 'layers)'"),
    # model ids and config paths
    _case("model-id-path-traversal", "RC106", "file: model ../../../../../../etc"),
    _case("model-id-url", "RC106", "file: model https://huggingface.co/meta-llama/Llama-3.1-8B"),
    _case("model-id-300-characters", "RC106", "file: a 300-character model id"),
    _case("model-id-tilde-user", "RC106", "file: model ~no-such-user-here/model"),
    _case("model-id-nul-escape", "RC106", "file: a \\0 escape in the model id"),
    _case("config-path-nul-escape", "RC106", "file: a \\0 escape in model.config"),
    _case("config-path-300-characters", "RC106", "file: a 300-character config file name"),
    _case("config-path-traversal-dir", "RC106", "file: model.config ../../../../../../../../etc"),
    _case("config-dir-without-config-json", "RC106", "file: model.config is a directory without config.json"),
    _case("config-not-json", "RC106", "file: a config.json that is not JSON"),
    _case("config-file-missing", "RC106", "file: a config.json that does not exist"),
    # absurd config.json values
    _case("config-list-model-type", "RC106", "file: model_type [\"llama\"]"),
    _case("config-million-layers", "RC106", "file: num_hidden_layers 1,000,000"),
    _case("config-hidden-size-1e9", "RC106", "file: hidden_size 1e9"),
    _case("config-hidden-size-float", "RC106", "file: hidden_size 576.0"),
    _case("config-negative-heads", "RC106", "file: num_attention_heads -9"),
    _case("config-nan-vocab", "RC106", "file: vocab_size NaN"),
    _case("config-infinite-rope-theta", "RC106", "file: rope_theta Infinity"),
    _case("config-huge-int", "RC106", "file: a 5,000-digit vocab_size"),
    _case("config-deep-json", "RC106", "file: 10,000 nested JSON arrays"),
    _case("config-remote-code-auto-map", "RC107", "file: an unknown model_type with auto_map (remote code)"),
]
BY_NAME = {c.name: c for c in CASES}


def run_case(case: Case, tmp: Path) -> dict:
    """The case through the engine's static checks: the rule ids found, internal errors, seconds."""
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.options import Options

    path = case.path(tmp)
    start = time.perf_counter()
    state, results = check_recipe(path, Options(), GpuCatalog.load(()), traced=False)
    seconds = time.perf_counter() - start
    findings = [f for r in results for f in r.findings]
    return {
        "ids": sorted({f.rule_id for f in findings}),
        "errors": [f"{r.check}: {type(r.error).__name__}: {str(r.error)[:200]}" for r in results if r.error],
        "seconds": seconds,
        "paths": sorted({f.location.path for f in findings}),
        "shown": str(path),
        "longest_message": max((len(f.message) + len(f.help) + len(f.why) for f in findings), default=0),
        "help_missing": [f.rule_id for f in findings if f.is_error and not f.help],
        "keys": sorted({f.key for f in findings}),
    }


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection and hub download fails the test: no case may reach the network."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:100])
        raise OSError("network access in a hostile-input test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    return attempts


def _assert_outcome(case: Case, outcome: dict) -> None:
    assert outcome["errors"] == [], f"{case.name}: internal errors {outcome['errors']}"
    if case.loads:
        assert not {"RC101", "RC103"} & set(outcome["ids"]), f"{case.name} must load: {outcome['ids']}"
    else:
        assert case.expect <= set(outcome["ids"]), f"{case.name}: expected {sorted(case.expect)}, got {outcome['ids']}"
    assert outcome["paths"] in ([], [outcome["shown"]]), "every finding names the file it is about"
    assert outcome["longest_message"] < MESSAGE_CHARS, f"{case.name}: a finding quotes too much"
    assert outcome["help_missing"] == [], f"{case.name}: findings without a fix: {outcome['help_missing']}"
    missed = [k for k in case.keys if not any(f == k or f.startswith(k + ".") for f in outcome["keys"])]
    assert missed == [], f"{case.name}: no finding for {missed}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_case_ends_in_its_finding_without_internal_error(case, tmp_path, no_network):
    outcome = run_case(case, tmp_path)
    _assert_outcome(case, outcome)
    assert outcome["seconds"] < CASE_SECONDS
    assert no_network == []


def test_the_corpus_has_a_manifest_entry_for_every_file_and_forty_cases():
    files = {p.stem for p in HOSTILE.glob("*.yaml")}
    listed = {c.name for c in CASES if c.make is None}
    assert files == listed
    assert len(CASES) >= 40


def test_a_recipe_with_a_bom_or_in_utf16_is_discovered_in_a_directory(tmp_path):
    from recipe_checks.discover import discover_recipes

    for name in ("valid-utf8-bom", "valid-utf16-bom", "valid-utf32-bom"):
        (tmp_path / f"{name}.yaml").write_bytes((HOSTILE / f"{name}.yaml").read_bytes())
    (tmp_path / "other.yaml").write_text("name: not a recipe\n")
    found = sorted(p.name for p in discover_recipes([str(tmp_path)]))
    assert found == ["valid-utf16-bom.yaml", "valid-utf32-bom.yaml", "valid-utf8-bom.yaml"]


def test_a_too_large_recipe_in_a_directory_is_still_discovered_so_its_finding_shows(tmp_path):
    from recipe_checks.discover import discover_recipes

    _big_recipe(tmp_path)
    _fifo(tmp_path, "fifo.yaml")  # not a regular file: never opened by discovery
    assert [p.name for p in discover_recipes([str(tmp_path)])] == ["big.yaml"]


def test_a_batch_of_hostile_recipes_still_reports_the_valid_one_in_json(tmp_path, capsys, no_network):
    from recipe_checks.cli import main

    batch = tmp_path / "batch"
    batch.mkdir()
    valid = batch / "zz-valid.yaml"
    valid.write_text(VALID)
    paths = [str(HOSTILE / f"{c.name}.yaml") for c in CASES if c.make is None and not c.loads]
    paths += [str(_fifo(batch, "fifo.yaml")), str(_sparse(batch, "sparse.yaml")), "/dev/zero"]
    paths.append(str(valid))
    main(["check", "--format", "json", *paths])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert str(valid) in report["recipes"]
    assert "internal error" not in captured.err
    valid_errors = [f for f in report["findings"] if f["path"] == str(valid) and f["severity"] == "error"]
    assert valid_errors == []
    reported = {f["path"] for f in report["findings"]}
    for path in paths[:-1]:
        assert path in reported, f"{path} has no finding"
    assert no_network == []


def test_the_text_report_of_unreadable_recipes_ends_and_shows_each_finding(tmp_path):
    """The text format quotes the source line of each finding: for a FIFO or /dev/zero that line
    must not be read from the file itself (it would block, or never end)."""
    paths = [str(_fifo(tmp_path, "fifo.yaml")), str(_sparse(tmp_path, "sparse.yaml")), "/dev/zero"]
    valid = tmp_path / "valid.yaml"
    valid.write_text(VALID)
    code = "import sys; from recipe_checks.cli import main; sys.exit(main(sys.argv[1:]))"
    try:
        done = subprocess.run([sys.executable, "-c", code, "check", *paths, str(valid)], capture_output=True,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=CASE_SECONDS * 2)
    except subprocess.TimeoutExpired:
        pytest.fail("recipe-checks check (text format) did not end on a FIFO / /dev/zero / sparse recipe")
    for path in paths:
        assert f"{path}" in done.stdout
    assert "4 recipe(s) checked" in done.stdout
    assert "Traceback" not in done.stderr


def test_network_and_remote_code_stay_off_for_hostile_model_ids(tmp_path, no_network):
    for name in ("model-id-url", "model-id-path-traversal", "config-remote-code-auto-map"):
        outcome = run_case(BY_NAME[name], tmp_path)
        assert outcome["errors"] == []
    assert no_network == []


@pytest.mark.parametrize("pattern", [
    r"(a+)+b", r"(a|ab)*c", r"(x{1,40}){1,40}", r".*.*.*.*x", r"(q_|q)*x", "[", "(?P<n", "a" * 600,
])
def test_an_unsafe_or_invalid_regex_is_refused_with_a_reason(pattern):
    from recipe_checks.regex_safety import unsafe_regex_reason

    assert unsafe_regex_reason(pattern)


@pytest.mark.parametrize("pattern", [
    r".*\.(q|v)_proj", r".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$",
    r"model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj", r"(\.\d+){2}", r"[\w_]+_proj", r"layers",
])
def test_the_regexes_peft_documents_are_accepted(pattern):
    from recipe_checks.regex_safety import unsafe_regex_reason

    assert unsafe_regex_reason(pattern) is None


# --- directory trees discovery cannot walk whole -----------------------------------------------------------------

DEEP_LEVELS = 1500  # Python's recursion limit is 1000: a recursive walk, pathlib's rglob or pytest's, ends in RecursionError


@pytest.fixture
def deep_tree(tmp_path):
    """recipes/ with a valid recipe on top and one DEEP_LEVELS directories down; removed bottom-up afterwards
    (shutil.rmtree, which pytest's tmp_path cleanup uses, recurses too)."""
    root = tmp_path / "recipes"
    root.mkdir()
    (root / "top.yaml").write_text(VALID)
    for level in range(1, DEEP_LEVELS + 1):  # Path.mkdir(parents=True) and os.makedirs recurse too
        os.mkdir(root.joinpath(*["d"] * level))
    bottom = root.joinpath(*["d"] * DEEP_LEVELS)
    (bottom / "deep.yaml").write_text(VALID)
    yield root
    (bottom / "deep.yaml").unlink()
    for level in range(DEEP_LEVELS, 0, -1):
        root.joinpath(*["d"] * level).rmdir()


def test_a_directory_1500_levels_deep_is_cut_off_with_a_note_and_the_other_recipes_are_checked(deep_tree, capsys):
    from recipe_checks.cli import main
    from recipe_checks.discover import MAX_DEPTH

    code = main(["check", str(deep_tree), "--format", "json", "--select", "RC1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert list(json.loads(captured.out)["recipes"]) == [str(deep_tree / "top.yaml")]
    first = deep_tree.joinpath(*["d"] * (MAX_DEPTH + 1))
    assert (f"recipe-checks: warning: 1 directory under {deep_tree} not searched: more than {MAX_DEPTH} levels deep "
            f"(the first: {first}); a recipe there is not checked: name its file to check it, or move it up the "
            "tree") in captured.err.splitlines()
    assert "Traceback" not in captured.err


def test_discovery_finds_a_recipe_max_depth_levels_down_and_cuts_the_level_below(tmp_path):
    from recipe_checks.discover import MAX_DEPTH, recipe_candidates

    deepest = tmp_path.joinpath(*["d"] * MAX_DEPTH)
    (deepest / "e").mkdir(parents=True)
    (deepest / "in.yaml").write_text(VALID)
    (deepest / "e" / "out.yaml").write_text(VALID)
    found, notes = recipe_candidates(tmp_path)
    assert found == [deepest / "in.yaml"]
    assert len(notes) == 1 and notes[0].startswith(f"1 directory under {tmp_path} not searched: more than {MAX_DEPTH}")


def test_discovery_ends_in_a_tree_with_directory_links_that_loop(tmp_path):
    from recipe_checks.discover import discover_recipes

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "r.yaml").write_text(VALID)
    os.symlink("..", tmp_path / "a" / "up")  # to its parent
    os.symlink("../b", tmp_path / "a" / "to-b")  # a -> b -> a
    os.symlink("../a", tmp_path / "b" / "to-a")
    os.symlink("self", tmp_path / "a" / "self")  # a link to itself
    assert list(discover_recipes([str(tmp_path)])) == [tmp_path / "a" / "r.yaml"]


def test_pytest_collects_a_tree_1500_levels_deep_up_to_the_cut_and_says_so(deep_tree, pytester):
    from recipe_checks.discover import MAX_DEPTH

    result = pytester.runpytest(str(deep_tree), "-k", "schema", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=1)
    first = deep_tree.joinpath(*["d"] * (MAX_DEPTH + 1))
    result.stdout.fnmatch_lines(["*recipe-checks: directories not searched*",
                                 (f"WARNING: {first}: not searched: more than {MAX_DEPTH} directory levels deep; a "
                                  "recipe there is not checked: name its file to check it, or move it up the tree")])
    assert "INTERNALERROR" not in result.stdout.str()


def test_pytest_collects_a_recipe_under_a_looping_directory_link_once(pytester):
    (pytester.path / "recipes" / "sub").mkdir(parents=True)
    (pytester.path / "recipes" / "sub" / "r.yaml").write_text(VALID)
    os.symlink("..", pytester.path / "recipes" / "sub" / "up")  # pytest follows it until ELOOP: 40 copies
    result = pytester.runpytest("recipes", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    link, target = pytester.path / "recipes" / "sub" / "up", (pytester.path / "recipes").resolve()
    result.stdout.fnmatch_lines(["*recipe-checks: directories not searched*",
                                 f"WARNING: {link}: not searched: a directory link to {target}, which holds it (a loop)*"])



@pytest.mark.slow  # starts worker processes: seconds on a shared 2-core machine
def test_under_xdist_the_controller_says_which_directories_the_workers_did_not_search(pytester):
    pytest.importorskip("xdist")
    (pytester.path / "recipes" / "sub").mkdir(parents=True)
    (pytester.path / "recipes" / "sub" / "r.yaml").write_text(VALID)
    os.symlink("..", pytester.path / "recipes" / "sub" / "up")
    result = pytester.runpytest("-n", "2", "-p", "xdist", "recipes", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)  # the controller collects nothing: the note comes from a worker
    result.stdout.fnmatch_lines(["*recipe-checks: directories not searched*",
                                 f"WARNING: {pytester.path / 'recipes' / 'sub' / 'up'}: not searched: *(a loop)*"])

# --- per-process time and memory (slow tier) ------------------------------------------------------

# The libraries a case needs, imported once by the fork server: each case then runs in a process of its
# own (its own crash, its own peak RSS) without paying the 10-13 s import of torch, transformers and peft
# again. The time asserted is the case's, not the import's.
_PRELOAD = ["torch", "transformers", "peft", "recipe_checks.engine", "recipe_checks.gpus", "recipe_checks.options", "recipe_checks.rules"]


def _fork_server():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*_PRELOAD, __name__])
    return context


def measure_in_child(case: Case, tmp: Path, limit: float = 120) -> dict:
    """Run one case in its own process, forked from a server that has the libraries imported: its outcome,
    wall seconds, and the peak RSS of that process alone (its own RUSAGE_SELF, the inherited imports
    included, not a maximum over every child of this one)."""
    context = _fork_server()
    receive, send = context.Pipe(duplex=False)
    start = time.perf_counter()
    child = context.Process(target=_child_main, args=(case.name, str(tmp), send), daemon=True)
    child.start()
    send.close()
    outcome = receive.recv() if receive.poll(limit) else None
    child.join(max(0.0, limit - (time.perf_counter() - start)))
    if child.is_alive():
        child.kill()
        child.join()
        return {"crash": f"still running after {limit} s", "wall": limit, "rss": 0}
    if outcome is None:
        return {"crash": f"the case's process ended with exit code {child.exitcode} and no outcome", "wall": 0, "rss": 0}
    outcome["wall"] = time.perf_counter() - start
    outcome["rss"] = outcome.get("rss_self", 0)
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_case_stays_within_time_and_memory_in_its_own_process(case, tmp_path):
    outcome = measure_in_child(case, tmp_path)
    assert "crash" not in outcome, outcome.get("crash")
    _assert_outcome(case, outcome)
    assert outcome["wall"] < CASE_SECONDS
    assert outcome["rss"] < CASE_RSS_BYTES


def _child_main(name: str, tmp: str, send) -> None:
    import resource

    try:
        outcome = run_case(BY_NAME[name], Path(tmp))
    except BaseException as exc:  # noqa: BLE001  reported as the crash it is
        outcome = {"crash": f"{type(exc).__name__}: {exc}"[:2000]}
    # ru_maxrss is in KiB on Linux: the peak of this process alone, the case included
    outcome["rss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    send.send(outcome)


def _measure_all() -> None:
    import tempfile

    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = measure_in_child(case, Path(tmp))
        rows.append((case.name, outcome.get("seconds", -1), outcome["rss"] / 2**20, outcome.get("ids"),
                     outcome.get("errors", outcome.get("crash"))))
        print(f"{rows[-1][0]:48s} {rows[-1][1]:7.3f}s {rows[-1][2]:7.0f} MiB {rows[-1][3]} {rows[-1][4] or ''}", flush=True)
    print(f"{len(rows)} cases; max check time {max(r[1] for r in rows):.2f} s; max RSS {max(r[2] for r in rows):.0f} MiB; "
          f"internal errors {sum(bool(r[4]) for r in rows)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        _measure_all()


def test_a_chat_template_past_the_text_limit_is_cut_and_the_file_still_bounded(tmp_path):
    """Free text no check reads (a chat template) is allowed up to MAX_TEXT_CHARS and cut past it, so a 1 MiB
    template does not refuse the file; every other limit still holds (the alias bomb below is refused)."""
    from recipe_checks.limits import MAX_TEXT_CHARS
    from recipe_checks.recipe.load import load_recipe_file

    path = tmp_path / "r.yaml"
    path.write_text(VALID + f"chat_template: {'y' * 1_000_000}\n")
    assert len(load_recipe_file(path).data["chat_template"]) == MAX_TEXT_CHARS
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(VALID + "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "chat_template: *i\n")
    outcome = run_case(Case("bomb", frozenset({"RC101"}), "generated", lambda t: bomb), tmp_path)
    assert "RC101" in outcome["ids"]
