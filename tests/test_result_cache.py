"""The persistent result cache (checks/result_cache.py): a traced step and a real CPU step are computed once
and read back on the next run; a changed recipe, GPU profile, library version or engine source recomputes
exactly what it decides; a corrupt entry is a miss; the cache stays bounded; --recipes-no-cache bypasses it;
concurrent runs neither corrupt nor lose entries. The recipes train a two-layer Llama from a local config.json,
so a trace and a real step take about a second."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA, TINY_LLAMA_RECIPE

from recipe_checks import result_cache
from recipe_checks.engine import run_check
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options
from recipe_checks.render import render_finding

# the tiny Llama's recipe for a GPU of the test's own profile, with a schedule key no trace reads
RECIPE = (TINY_LLAMA_RECIPE.replace("rtx4090", "testgpu")
          .replace("  learning_rate: 2.0e-4\n", "  learning_rate: 2.0e-4\n  warmup_steps: 0\n"))
PROFILE = """\
testgpu:
  name: Test GPU
  architecture: ada
  compute_capability: "8.9"
  memory_gb: MEMORY
  bf16: true
  fp8: true
  sources: [a test profile]
"""
CHECKS = (("vram", "testgpu"), ("cpu-step", None))


@pytest.fixture(autouse=True)
def only_the_trace_and_step_entries(monkeypatch):
    """These tests are of the trace and real-step entries: the check-level entries above them (their own tests
    are tests/test_check_cache.py) would answer a rerun before either is asked."""
    from recipe_checks import check_cache

    monkeypatch.setattr(check_cache, "recipe_parts", lambda state: None)


@pytest.fixture(autouse=True)
def nothing_remembered_in_this_process():
    """Each test starts as a new process would: no trace remembered in memory, no cache object."""
    from recipe_checks.memory.step import _trace_cached

    _trace_cached.cache_clear()
    result_cache.forget()
    yield
    result_cache.forget()


@pytest.fixture
def project(tmp_path: Path, result_cache_dir: Path) -> Path:
    """A recipe, its model's config and a GPU profile file; the result cache on, in a fresh directory."""
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA))
    (tmp_path / "gpus.yaml").write_text(PROFILE.replace("MEMORY", "24"))
    return tmp_path


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times a trace and a real step were computed rather than read from the cache."""
    from recipe_checks.memory import step
    from recipe_checks.run import cpu_step

    counts = {"trace": 0, "cpu-step": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(step, "_trace", counting("trace", step._trace))
    monkeypatch.setattr(cpu_step, "_run", counting("cpu-step", cpu_step._run))
    return counts


def check(project: Path, computed: dict[str, int] | None = None, **options) -> list[str]:
    """One run of the vram and cpu-step checks, as a new process would (nothing remembered in this one but the
    result cache): the findings as a user reads them; `computed` is reset first."""
    from recipe_checks.context import RecipeState
    from recipe_checks.memory.step import _trace_cached

    _trace_cached.cache_clear()
    if computed is not None:
        computed.update(dict.fromkeys(computed, 0))
    catalog = GpuCatalog.load((str(project / "gpus.yaml"),))
    state = RecipeState.from_file(project / "r.yaml", "r.yaml", Options(**options), catalog)
    shown = []
    for name, gpu in CHECKS:
        result = run_check(state, name, gpu)
        assert result.error is None and result.skipped is None, (result.error, result.skipped)
        shown += [render_finding(f, state.source_line(f.location.line)) for f in result.findings]
    return shown


def entries(directory: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in (directory / "v1").glob("*.json"))


def test_a_second_run_reads_the_trace_and_the_real_step_the_first_stored(project, result_cache_dir, computed):
    cold = check(project, computed)
    assert computed == {"trace": 1, "cpu-step": 1}
    assert entries(result_cache_dir) == ["cpu-step", "trace"]
    warm = check(project, computed)
    assert computed == {"trace": 0, "cpu-step": 0}
    assert warm == cold  # the same findings, word for word (RC601's peak, RC701's step)
    assert any("RC601" in line for line in warm) and any("RC701" in line for line in warm)


def test_a_changed_schedule_reruns_the_real_step_and_keeps_the_trace(project, result_cache_dir, computed):
    check(project, computed)
    recipe = project / "r.yaml"
    recipe.write_text(recipe.read_text().replace("warmup_steps: 0", "warmup_steps: 5"))  # no memory setting
    check(project, computed)
    assert computed == {"trace": 0, "cpu-step": 1}
    assert entries(result_cache_dir) == ["cpu-step", "cpu-step", "trace"]


def test_a_changed_sequence_length_reruns_both(project, result_cache_dir, computed):
    check(project, computed)
    recipe = project / "r.yaml"
    recipe.write_text(recipe.read_text().replace("max_seq_length: 128", "max_seq_length: 256"))
    check(project, computed)
    assert computed == {"trace": 1, "cpu-step": 1}
    assert entries(result_cache_dir) == ["cpu-step", "cpu-step", "trace", "trace"]


def test_the_real_steps_leave_the_config_they_are_keyed_by_as_it_was(project, result_cache_dir, computed,
                                                                     monkeypatch):
    """cpu-train is keyed after cpu-step ran: a step that completed the shared config in place (transformers
    adds rope_theta to a rope_scaling dict) gave it another key than a warm run, where cpu-step did not run."""
    from recipe_checks.context import RecipeState
    from recipe_checks.run import cpu_train

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256}
    (project / "tiny-llama.json").write_text(json.dumps({**TINY_LLAMA, "rope_scaling": rope}))
    trained = []
    monkeypatch.setattr(cpu_train, "_run", lambda state, steps, original=cpu_train._run: trained.append(steps)
                        or original(state, steps))
    for _ in range(2):
        state = RecipeState.from_file(project / "r.yaml", "r.yaml", Options(train_steps=2),
                                      GpuCatalog.load((str(project / "gpus.yaml"),)))
        assert run_check(state, "cpu-train").error is None
    assert trained == [2] and computed["cpu-step"] == 1
    assert entries(result_cache_dir) == ["cpu-step", "cpu-train"]


def test_a_changed_model_config_reruns_both(project, result_cache_dir, computed):
    check(project, computed)
    (project / "tiny-llama.json").write_text(json.dumps({**TINY_LLAMA, "intermediate_size": 768}))
    check(project, computed)
    assert computed == {"trace": 1, "cpu-step": 1}
    assert entries(result_cache_dir) == ["cpu-step", "cpu-step", "trace", "trace"]


def test_a_changed_gpu_profile_changes_the_verdict_without_recomputing_either(project, result_cache_dir, computed):
    """No GPU profile decides a trace (the budget is applied to it afterwards) nor a real CPU step: a profile
    with less memory gives its own budget at once, from the stored trace."""
    before = check(project, computed)
    (project / "gpus.yaml").write_text(PROFILE.replace("MEMORY", "16"))
    after = check(project, computed)
    assert computed == {"trace": 0, "cpu-step": 0}
    assert [line for line in before if "RC601" in line] != [line for line in after if "RC601" in line]
    assert any("of the 15.2 GiB budget on testgpu" in line for line in after)


def test_a_gpu_without_bf16_traces_the_recipe_it_reads_and_keeps_the_real_step(project, result_cache_dir, computed):
    """bf16: auto (an Axolotl recipe's) is resolved per GPU: a profile without bf16 makes another step to trace."""
    recipe = project / "r.yaml"
    (project / "tiny").mkdir()
    (project / "tiny" / "config.json").write_text(json.dumps(TINY_LLAMA))
    axolotl = ("base_model: ./tiny\nadapter: lora\nlora_r: 8\n"
               "lora_alpha: 16\nlora_target_modules: [q_proj, v_proj]\nmicro_batch_size: 1\nsequence_len: 128\n"
               "learning_rate: 0.0002\nbf16: auto\n")
    recipe.write_text(axolotl)
    check(project, computed, gpus=("testgpu",))
    (project / "gpus.yaml").write_text(PROFILE.replace("MEMORY", "24").replace("bf16: true", "bf16: false"))
    check(project, computed, gpus=("testgpu",))
    assert computed == {"trace": 1, "cpu-step": 0}


def test_a_changed_library_version_reruns_both_and_keeps_the_old_entries(project, result_cache_dir, computed,
                                                                         monkeypatch):
    check(project, computed)
    versions = result_cache.library_versions()
    monkeypatch.setattr(result_cache, "library_versions", lambda: {**versions, "transformers": "99.0"})
    result_cache.forget()
    check(project, computed)
    assert computed == {"trace": 1, "cpu-step": 1}
    monkeypatch.setattr(result_cache, "library_versions", lambda: versions)  # back: the first entries still hit
    result_cache.forget()
    check(project, computed)
    assert computed == {"trace": 0, "cpu-step": 0}
    assert len(entries(result_cache_dir)) == 4


def test_a_changed_engine_source_reruns_both(project, result_cache_dir, computed, monkeypatch):
    check(project, computed)
    monkeypatch.setattr(result_cache, "engine_hash", lambda: "0" * 64)
    result_cache.forget()
    check(project, computed)
    assert computed == {"trace": 1, "cpu-step": 1}
    assert entries(result_cache_dir) == ["cpu-step", "cpu-step", "trace", "trace"]


def test_the_source_hash_follows_every_source_and_data_file_and_nothing_else(tmp_path):
    package = tmp_path / "checks"
    (package / "rules").mkdir(parents=True)
    (package / "rules" / "rc1.py").write_text("X = 1\n")
    (package / "data.yaml").write_text("a: 1\n")
    first = result_cache.source_hash(package)
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "rc1.cpython-311.pyc").write_bytes(b"\0")
    (package / "notes.txt").write_text("not code")
    assert result_cache.source_hash(package) == first
    (package / "data.yaml").write_text("a: 2\n")
    assert result_cache.source_hash(package) != first
    (package / "data.yaml").write_text("a: 1\n")
    (package / "rules" / "rc1.py").rename(package / "rules" / "rc2.py")
    assert result_cache.source_hash(package) != first


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # truncated
    lambda text: "\0garbage{",
    lambda text: "[]",
    lambda text: json.dumps({**json.loads(text), "schema": 0}),
    lambda text: json.dumps({**json.loads(text), "key": "0" * 64}),  # an entry copied under another key
    lambda text: json.dumps({**json.loads(text), "extra": 1}),
    lambda text: text.replace('"peak_bytes":', '"peak_bytes":"many","was":'),
    lambda text: text.replace('"losses":[', '"losses":["NaN",'),
    lambda text: text.replace('"report":{', '"report":{"injected":true,'),
    lambda text: text.replace('"notes":[', '"notes":[1,'),
    lambda text: "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser recurses
], ids=["truncated", "garbage", "not-an-object", "other-schema", "other-key", "extra-field", "wrong-type",
        "string-in-floats", "unknown-field", "number-in-strings", "deep"])
def test_a_damaged_entry_is_a_miss_and_is_replaced(project, result_cache_dir, computed, damage):
    cold = check(project, computed)
    damaged = set()
    for path in (result_cache_dir / "v1").glob("*.json"):
        text = path.read_text()
        if damage(text) != text:
            path.write_text(damage(text))
            damaged.add(path.name.rsplit("-", 1)[0])
    assert damaged
    assert check(project, computed) == cold
    assert computed == {kind: int(kind in damaged) for kind in ("trace", "cpu-step")}
    check(project, computed)  # replaced by whole entries
    assert computed == {"trace": 0, "cpu-step": 0}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_an_entry_that_is_a_fifo_or_a_device_is_a_miss_not_a_hang(project, result_cache_dir, computed):
    check(project, computed)
    trace, step = sorted((result_cache_dir / "v1").glob("*.json"), key=lambda p: not p.name.startswith("trace"))
    trace.unlink()
    os.mkfifo(trace)
    step.unlink()
    step.symlink_to("/dev/zero")
    check(project, computed)
    assert computed == {"trace": 1, "cpu-step": 1}


def test_the_cache_keeps_the_most_recently_used_entries_within_its_bound(tmp_path):
    store = result_cache.ResultCache(tmp_path, max_entries=10, max_bytes=10**9)
    for i in range(10):
        assert store.put("trace", f"{i:064x}", {"i": i})
        os.utime(store.path("trace", f"{i:064x}"), (1000 + i, 1000 + i))
    assert store.get("trace", f"{0:064x}", lambda value: value) == {"i": 0}  # used now: kept
    store.put("trace", f"{10:064x}", {"i": 10})  # the 11th entry: down to 9, the least recently used out
    kept = {json.loads(p.read_text())["value"]["i"] for p in store.folder.glob("*.json")}
    assert kept == {0, 3, 4, 5, 6, 7, 8, 9, 10}
    assert len(kept) <= 0.9 * store.max_entries


def test_the_cache_stays_under_its_size_in_bytes(tmp_path):
    store = result_cache.ResultCache(tmp_path, max_entries=1000, max_bytes=20_000)
    for i in range(40):
        store.put("cpu-step", f"{i:064x}", {"pad": "x" * 1000})
    assert sum(p.stat().st_size for p in store.folder.glob("*.json")) <= 20_000
    assert store.get("cpu-step", f"{39:064x}", lambda value: value) is not result_cache.MISS


def test_threads_writing_and_reading_the_same_entries_see_whole_entries_or_none(tmp_path):
    """Concurrent writers of one key: os.replace swaps whole files, so a reader always gets one writer's whole
    value, never a mix, a partial file or a miss."""
    store = result_cache.ResultCache(tmp_path)
    values = [{"writer": w, "payload": [w] * 20_000} for w in range(4)]
    seen, errors = [], []

    def writer(value):
        try:
            for _ in range(25):
                assert store.put("trace", "a" * 64, value)
        except Exception as exc:  # noqa: BLE001  reported by the test, not lost in the thread
            errors.append(exc)

    def reader():
        try:
            for _ in range(100):
                seen.append(store.get("trace", "a" * 64, lambda value: value))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    store.put("trace", "a" * 64, values[0])  # from now on the entry always exists: a read never misses

    threads = [threading.Thread(target=writer, args=(v,)) for v in values] + [threading.Thread(target=reader)
                                                                              for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(seen) == 200 and all(found in values for found in seen)
    assert store.get("trace", "a" * 64, lambda value: value) in values
    assert not list(store.folder.glob(".tmp-*"))  # no temporary file left behind


def test_a_step_is_stored_and_a_refused_one_is_not(tmp_path):
    """A refusal carries the library's exception, whose class and attributes the rules read (RC701, RC711) and
    JSON does not hold: it runs again, rather than come back as another verdict."""
    from recipe_checks.run.cpu_step import StepOutcome, outcome_from_dict, outcome_to_dict
    from recipe_checks.run.dpo import DpoStart
    from recipe_checks.run.setup import SetupRefused
    from recipe_checks.run.step import StepReport

    store = result_cache.ResultCache(tmp_path)
    ran = StepOutcome(report=StepReport("LoRA", losses=[2.5, float("nan")], no_gradient=["model.layers.0.mlp"]),
                      broken_by="learning_rate", preference=DpoStart(0.0, 0.0, 0.69, ["sigmoid"]))
    refused = StepOutcome(refused=SetupRefused("LoraConfig", KeyError("target_modules"), ("lora", "r")))

    def twice(outcome: StepOutcome) -> tuple[list, list]:
        runs: list = []
        read = [result_cache.cached("cpu-step", {"case": outcome is ran}, lambda: runs.append(1) or outcome,
                                    encode=outcome_to_dict, decode=outcome_from_dict, store=store) for _ in range(2)]
        return runs, read

    runs, read = twice(refused)
    assert len(runs) == 2 and read == [refused, refused]
    runs, read = twice(ran)
    assert len(runs) == 1 and read[0] is ran and read[1] is not ran
    assert read[1].report.no_gradient == ["model.layers.0.mlp"] and not read[1].report.finite_loss
    assert (read[1].broken_by, read[1].preference) == ("learning_rate", ran.preference)


def test_a_value_that_does_not_read_back_the_same_is_not_stored(tmp_path):
    store = result_cache.ResultCache(tmp_path)

    def runs(case: str, decode) -> int:
        calls: list = []
        for _ in range(2):
            result_cache.cached("trace", {"case": case}, lambda: calls.append(1) or {"a": 1},
                                encode=lambda value: value, decode=decode, store=store)
        return len(calls)

    assert runs("faithful", lambda data: data) == 1
    assert runs("lossy", lambda data: {**data, "added": True}) == 2  # would read back as another value: not stored
    assert len(list(store.folder.glob("*.json"))) == 1


@pytest.mark.parametrize(("option", "no_cache", "ini", "env", "expected"), [
    (None, False, None, {}, "DEFAULT"),
    ("cli", False, "ini", {"RECIPE_CHECKS_CACHE_DIR": "env"}, "cli"),
    (None, False, "ini", {"RECIPE_CHECKS_CACHE_DIR": "env"}, "env"),
    (None, False, "ini", {}, "ini"),
    ("cli", True, None, {}, None),
    (None, False, "ini", {"RECIPE_CHECKS_NO_CACHE": "1", "RECIPE_CHECKS_CACHE_DIR": "env"}, None),
    ("cli", False, None, {"RECIPE_CHECKS_NO_CACHE": "true"}, "cli"),  # the command line over the environment
    (None, False, None, {"RECIPE_CHECKS_NO_CACHE": "0"}, "DEFAULT"),
    (None, False, None, {"XDG_CACHE_HOME": "/x/cache"}, "/x/cache/recipe-checks"),
])
def test_the_command_line_comes_before_the_environment_before_the_ini(option, no_cache, ini, env, expected):
    found = result_cache.cache_directory(option, no_cache=no_cache, ini=ini, environ=env)
    if expected == "DEFAULT":
        assert found == result_cache.default_directory(env) and found.endswith("recipe-checks")
    else:
        assert found == expected


def test_the_suite_runs_without_a_cache_unless_a_test_opts_in():
    assert Options().cache_dir is None and result_cache.current() is None


# -- through pytest and the command line -------------------------------------------------------------------
@pytest.fixture
def recipes(pytester: pytest.Pytester) -> Path:
    pytester.makefile(".yaml", r=RECIPE.replace("testgpu", "rtx4090"))
    (pytester.path / "tiny-llama.json").write_text(json.dumps(TINY_LLAMA))
    return pytester.path


def test_the_plugin_stores_then_reads_and_says_so(pytester, recipes, tmp_path):
    cache = tmp_path / "c"
    args = ("r.yaml", "-k", "vram or cpu-step", "-p", "no:cacheprovider", f"--recipes-cache-dir={cache}")
    first = pytester.runpytest(*args)
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines([f"recipe-checks: result cache: {cache}",
                                f"recipe-checks: result cache: 0 hit(s), 2 miss(es), 2 written ({cache})"])
    from recipe_checks.memory.step import _trace_cached

    _trace_cached.cache_clear()
    second = pytester.runpytest(*args)
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines([f"recipe-checks: result cache: 2 hit(s), 0 miss(es), 0 written ({cache})"])


def test_recipes_no_cache_neither_reads_nor_writes(pytester, recipes, result_cache_dir, computed):
    from recipe_checks.memory.step import _trace_cached

    args = ("r.yaml", "-k", "vram or cpu-step", "-p", "no:cacheprovider")
    pytester.runpytest(*args).assert_outcomes(passed=2)  # RECIPE_CHECKS_CACHE_DIR: filled
    stored = {p: p.read_bytes() for p in (result_cache_dir / "v1").glob("*.json")}
    assert len(stored) == 2
    _trace_cached.cache_clear()
    computed.update(trace=0, **{"cpu-step": 0})
    bypassed = pytester.runpytest(*args, "--recipes-no-cache", f"--recipes-cache-dir={recipes / 'c'}")
    bypassed.assert_outcomes(passed=2)
    bypassed.stdout.fnmatch_lines(["recipe-checks: result cache: off"])
    assert computed == {"trace": 1, "cpu-step": 1}  # not read: both ran again
    assert not (recipes / "c").exists()
    assert {p: p.read_bytes() for p in (result_cache_dir / "v1").glob("*.json")} == stored  # nor written


def test_the_ini_names_the_cache_relative_to_itself(pytester, recipes, monkeypatch):
    monkeypatch.delenv("RECIPE_CHECKS_NO_CACHE")
    pytester.makeini("[pytest]\nrecipe_checks_cache_dir = .recipe-cache\n")
    pytester.runpytest("r.yaml", "-k", "vram", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert entries(recipes / ".recipe-cache") == ["trace"]


def test_the_command_line_check_and_estimate_share_the_cache(recipes, tmp_path, capsys):
    from recipe_checks.cli import main
    from recipe_checks.memory.step import _trace_cached

    cache = tmp_path / "c"
    assert main(["check", "--with-vram", "--cache-dir", str(cache), str(recipes / "r.yaml")]) == 0
    assert entries(cache) == ["trace"]
    _trace_cached.cache_clear()
    trace = next((cache / "v1").glob("trace-*.json"))
    os.utime(trace, (1000, 1000))
    assert main(["estimate", "--cache-dir", str(cache), str(recipes / "r.yaml")]) == 0
    assert trace.stat().st_mtime > 1000  # read (a hit marks it used), not traced again
    assert main(["check", "--with-vram", "--no-cache", "--cache-dir", str(tmp_path / "d"),
                 str(recipes / "r.yaml")]) == 0
    assert not (tmp_path / "d").exists()
    capsys.readouterr()


def _job(directory: Path, cache: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RECIPE_CHECKS_CACHE_DIR": str(cache)}
    env.pop("RECIPE_CHECKS_NO_CACHE")
    return subprocess.Popen([sys.executable, "-m", "pytest", "r.yaml", "q.yaml", "-q", "-p", "no:cacheprovider",
                             "-m", "not slow", *args], cwd=directory, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _valid_entries(cache: Path) -> dict[str, int]:
    """Each entry of the cache read back through its kind's decoder: a count per kind."""
    from recipe_checks.memory.settings import StepSettings
    from recipe_checks.memory.step import StepTrace
    from recipe_checks.run.cpu_step import outcome_from_dict

    from recipe_checks.check_cache import decoder

    decode = {"trace": lambda v: StepTrace.from_dict(v, StepSettings(1, 1)), "cpu-step": outcome_from_dict,
              "check": decoder("a check", None)}  # the check-level entries above them (tests/test_check_cache.py)
    counts: dict[str, int] = {}
    for path in (cache / "v1").glob("*.json"):
        envelope = json.loads(path.read_text())
        decode[envelope["kind"]](envelope["value"])
        counts[envelope["kind"]] = counts.get(envelope["kind"], 0) + 1
    assert not list((cache / "v1").glob(".tmp-*"))
    return counts


@pytest.mark.slow
def test_two_runs_at_once_and_an_xdist_run_neither_corrupt_nor_lose_entries(pytester, recipes, tmp_path):
    (recipes / "q.yaml").write_text(RECIPE.replace("testgpu", "rtx4090").replace("r: 8", "r: 4"))
    cache = tmp_path / "c"
    runs = [_job(recipes, cache), _job(recipes, cache)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    entries = _valid_entries(cache)
    assert (entries["trace"], entries["cpu-step"]) == (2, 2)
    xdist = _job(recipes, cache, "-n", "2")  # every entry read back by the workers: all hits
    output = xdist.communicate(timeout=600)[0]
    assert xdist.returncode == 0, output
    assert re.search(rf"recipe-checks: result cache: [1-9]\d* hit\(s\), 0 miss\(es\), 0 written \({re.escape(str(cache))}\)",
                     output), output
    fresh = tmp_path / "fresh"
    xdist = _job(recipes, fresh, "-n", "2")  # two workers writing into one cache
    output = xdist.communicate(timeout=600)[0]
    assert xdist.returncode == 0, output
    fresh_entries = _valid_entries(fresh)
    assert (fresh_entries["trace"], fresh_entries["cpu-step"]) == (2, 2)
    assert fresh_entries == entries  # the same entries, whether written by two runs at once or two workers
