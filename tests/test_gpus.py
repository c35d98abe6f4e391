"""GPU profiles: the shipped data validates, names are forgiving, a unique prefix resolves, an ambiguous
name lists its profiles (and the checks run on what they share), unknown names suggest only related cards."""

from __future__ import annotations

import pytest

from recipe_checks.engine import check_recipe
from recipe_checks.gpus import AmbiguousGpuError, GpuCatalog, GpuFamily, GpuProfileError, NeedsExactCard, UnknownGpuError
from recipe_checks.gpus.names import parse_card_name
from recipe_checks.options import Options

REQUIRED = ["rtx4060", "rtx4070", "rtx4080", "rtx4090", "rtx5090", "rtx3090", "t4", "v100-16gb", "a10g", "l4",
            "l40s", "a6000", "a100-40gb", "a100-80gb", "h100", "h200"]


@pytest.fixture(scope="module")
def catalog() -> GpuCatalog:
    return GpuCatalog.load()


def test_every_required_gpu_is_shipped_with_a_source(catalog):
    for name in REQUIRED:
        profile = catalog.get(name)
        assert profile.sources and all(s.startswith("http") for s in profile.sources)


@pytest.mark.parametrize("spelling", ["RTX 4090", "rtx-4090", "rtx_4090", "Rtx4090", "GeForce RTX 4090"])
def test_names_are_forgiving(catalog, spelling):
    assert catalog.get(spelling).key == "rtx4090"


def test_unknown_name_lists_known_names_and_the_nearest(catalog):
    with pytest.raises(UnknownGpuError) as info:
        catalog.get("rtx4099")
    assert info.value.suggestions[0] == "rtx4090"
    assert "Known: a100-40gb" in str(info.value)


def test_bf16_and_fp8_follow_compute_capability(catalog):
    for profile in catalog:
        assert profile.supports_bf16 == (profile.cc >= (8, 0)), profile.key
        assert profile.supports_fp8 == (profile.cc >= (8, 9)), profile.key


def test_memory_is_what_the_card_reports(catalog):
    assert 7.5 < catalog.get("rtx4060").memory_bytes / 2**30 <= 8
    assert 139 < catalog.get("h200").memory_bytes / 2**30 < 141


def test_user_profiles_extend_the_catalog(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "mi300x:\n  name: AMD Instinct MI300X\n  vendor: amd\n  architecture: cdna3\n  compute_capability: '9.4'\n"
        "  memory_gb: 192\n  bf16: true\n  fp8: true\n  sources: [https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html]\n"
    )
    assert GpuCatalog.load((str(extra),)).get("MI300X").vendor == "amd"


def test_an_invalid_profile_file_is_a_clear_error(tmp_path):
    extra = tmp_path / "bad.yaml"
    extra.write_text("mygpu:\n  name: x\n")
    with pytest.raises(GpuProfileError, match="GPU profile 'mygpu' is invalid"):
        GpuCatalog.load((str(extra),))


@pytest.mark.parametrize("name,profiles", [
    ("v100", ["v100-16gb", "v100-32gb"]), ("a100", ["a100-40gb", "a100-80gb"]),
    ("Tesla V100", ["v100-16gb", "v100-32gb"]), ("nvidia a100", ["a100-40gb", "a100-80gb"]),
])
def test_a_name_of_several_profiles_says_so_and_lists_them(catalog, name, profiles):
    with pytest.raises(AmbiguousGpuError) as info:
        catalog.get(name)
    assert isinstance(info.value, UnknownGpuError)  # callers that catch UnknownGpuError still report it
    assert [p.key for p in info.value.candidates] == profiles
    assert f"'{name}' matches 2 GPU profiles: {profiles[0]} (" in str(info.value)
    family = catalog.resolve(name)
    assert isinstance(family, GpuFamily) and family.keys == profiles


@pytest.mark.parametrize("name,key", [
    ("rtx3060", "rtx3060-12gb"), ("RTX 3060", "rtx3060-12gb"), ("RTX 4060 Ti", "rtx4060ti-16gb"),
    ("geforce rtx 4060 ti", "rtx4060ti-16gb"), ("rtx4060", "rtx4060"), ("h100", "h100"), ("4090", "rtx4090"),
])
def test_a_unique_prefix_resolves_and_an_exact_name_wins(catalog, name, key):
    assert catalog.get(name).key == key


@pytest.mark.parametrize("name", ["l40", "a10", "rtx", "nvidia", "tesla"])
def test_a_prefix_resolves_only_up_to_a_separator_and_with_a_model_number(catalog, name):
    # L40 and A10 are other cards than L40S and A10G; 'rtx' names no card at all
    with pytest.raises(UnknownGpuError) as info:
        catalog.resolve(name)
    assert not isinstance(info.value, AmbiguousGpuError)


@pytest.mark.parametrize("name,suggested", [
    ("rtx4099", ["rtx4090"]), ("rtz4090", ["rtx4090"]), ("a6001", ["a6000"]), ("rtx a6001", ["a6000"]),
    ("t4 16gb", ["t4"]),
    # other cards than any profile: never offered the nearest-looking one
    ("rtx5080", []), ("rtx3080", []), ("rtx4050", []), ("v100s", []), ("h800", []), ("p40", []),
    ("rtx 4060 ti 8gb", []), ("v100-24gb", []), ("a1000", []), ("l40", []),
])
def test_suggestions_are_cards_of_the_same_family_and_memory(catalog, name, suggested):
    with pytest.raises(UnknownGpuError) as info:
        catalog.get(name)
    assert info.value.suggestions == suggested


def test_no_suggestion_is_another_series_generation_or_variant(catalog):
    # every one-digit change of every known name: a suggestion keeps series, generation and variant
    for profile in catalog:
        for spelling in (profile.key, *profile.aliases):
            written = parse_card_name(spelling)
            if written is None:
                continue
            for digit in "0123456789":
                name = spelling.replace(written.number, written.number[:-1] + digit, 1)
                try:
                    catalog.resolve(name)
                    continue
                except UnknownGpuError as exc:
                    suggestions = exc.suggestions
                for key in suggestions:
                    other = parse_card_name(key)
                    assert (other.number[:-1], other.variant) == (written.number[:-1], written.variant), (name, key)


def test_a_family_shares_what_its_profiles_agree_on_and_nothing_else(catalog):
    a100 = catalog.resolve("a100")
    assert a100.agrees and a100.cc == (8, 0) and a100.supports_bf16 and not a100.supports_fp8
    assert a100.dense_bf16_tflops == 312  # the same on both cards
    with pytest.raises(NeedsExactCard, match="differ in memory_bytes"):
        a100.memory_bytes


MIXED = """\
model: HuggingFaceTB/SmolLM2-135M
lora: {r: 8, target_modules: [q_proj, v_proj]}
training: {per_device_train_batch_size: 1, bf16: true, max_seq_length: 256}
hardware:
  gpu: [GPU]
"""


def _findings(results, check):
    return [f for r in results if r.check == check for f in r.findings]


def test_an_ambiguous_target_runs_the_precision_checks_and_asks_for_the_card_in_vram(write, catalog):
    path = write("v100.yaml", MIXED.replace("GPU", "v100"))
    state, results = check_recipe(path, Options(), catalog)
    schema = _findings(results, "schema")
    assert [(f.rule_id, f.severity.value) for f in schema] == [("RC105", "warning")]
    assert "v100-16gb (15.8 GiB), v100-32gb (31.7 GiB)" in schema[0].message
    # bf16 on a V100 of either size: the precision check ran against what they share
    assert [f.rule_id for f in _findings(results, "precision")] == ["RC401"]
    vram = _findings(results, "vram")
    assert [(f.rule_id, f.severity.value) for f in vram] == [("RC105", "error")]
    assert vram[0].message.startswith("the vram check needs the exact card: 'v100' matches v100-16gb")
    assert "v100-16gb or v100-32gb" in vram[0].help and vram[0].location.line == 5
    assert not any(r.error for r in results)


def test_an_ambiguous_target_with_a_vram_budget_is_checked_against_the_budget(write, catalog):
    path = write("a100.yaml", MIXED.replace("GPU", "a100") + "  vram_budget_gib: 30\n")
    _, results = check_recipe(path, Options(), catalog)
    assert [f.rule_id for f in _findings(results, "vram")] == ["RC601"]  # the budget needs no card memory


def test_a_unique_prefix_is_said_as_information(write, catalog):
    _, results = check_recipe(write("r.yaml", MIXED.replace("GPU", "rtx3060")), Options(), catalog, traced=False)
    info = _findings(results, "schema")
    assert [(f.rule_id, f.severity.value) for f in info] == [("RC105", "info")]
    assert "'rtx3060' is taken as rtx3060-12gb" in info[0].message


def test_an_exact_gpu_option_selects_a_recipe_declaring_its_family(write, catalog):
    path = write("a100.yaml", MIXED.replace("GPU", "a100"))
    _, results = check_recipe(path, Options(gpus=["a100-80gb"]), catalog, traced=False)
    assert {r.gpu for r in results if r.check == "precision"} == {"a100-80gb"}
    _, results = check_recipe(path, Options(gpus=["rtx4090"]), catalog, traced=False)
    assert results == []  # off target, as before


def test_the_plugin_takes_an_ambiguous_gpu_option_and_runs_what_its_profiles_share(pytester):
    pytester.makefile(".yaml", v100=MIXED.replace("GPU", "v100-16gb"))
    result = pytester.runpytest(".", "--gpu=v100", "-p", "no:cacheprovider", "-k", "precision or vram")
    result.stdout.fnmatch_lines([
        "recipe-checks *: target GPU: v100 (any of v100-16gb (15.8 GiB), v100-32gb (31.7 GiB): sm_70, bf16 no, "
        "fp8 no; memory checks need the exact card)",
        "*RC401 bf16 training on v100, which has no bf16 support*",
        "*RC105 the vram check needs the exact card: 'v100' matches v100-16gb (15.8 GiB), v100-32gb (31.7 GiB)*",
        "*help: name one of them in --gpu: v100-16gb or v100-32gb*",
    ])
    result.assert_outcomes(failed=2)


# A user file that redefines the shipped rtx4090 with 1000 GB: every memory check against rtx4090 would pass.
HUGE_RTX4090 = """\
rtx4090:
  name: NVIDIA GeForce RTX 4090
  architecture: ada
  compute_capability: "8.9"
  memory_gb: 1000
  bf16: true
  fp8: true
  dense_bf16_tflops: 165.2
  dense_fp16_tflops: 165.2
  memory_bandwidth_gbs: 1008
  sources: [https://example.com/my-4090]
"""
HUGE_NOTE = ("GPU profile 'rtx4090' in {file} replaces the shipped profile of that name (NVIDIA GeForce RTX 4090): "
             "memory 24.0 GiB -> 1000.0 GiB; every check against 'rtx4090' uses {file}'s figures. To add a card "
             "beside 'rtx4090' instead, give the profile a name of its own")


def test_a_user_file_that_redefines_a_shipped_profile_is_recorded_with_what_it_changes(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(HUGE_RTX4090)
    catalog = GpuCatalog.load((str(mine),))
    assert catalog.get("rtx4090").memory_gb == 1000  # allowed: a user may correct a shipped figure ...
    assert catalog.override_notes() == [HUGE_NOTE.format(file=mine)]  # ... but the run says so
    assert catalog.get("GeForce RTX 4090").memory_gb == 1000  # the shipped spellings still name the card


def test_a_user_profile_named_like_a_shipped_alias_is_recorded_and_a_copy_or_a_new_card_is_not(tmp_path, catalog):
    alias = tmp_path / "alias.yaml"
    alias.write_text(HUGE_RTX4090.replace("rtx4090:", "'4090':"))  # '4090': an alias of the shipped rtx4090
    (note,) = GpuCatalog.load((str(alias),)).override_notes()
    assert note.startswith(f"GPU profile '4090' in {alias} takes the name '4090', an alias of the shipped profile "
                           "'rtx4090' (NVIDIA GeForce RTX 4090): memory 24.0 GiB -> 1000.0 GiB;")
    shipped = catalog.get("rtx4090").model_dump(exclude={"key", "aliases", "name"})
    import yaml

    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump({"RTX-4090": {"name": "my 4090", **shipped}}))
    assert GpuCatalog.load((str(copy),)).override_notes() == []  # the same figures: no check reads otherwise
    new = tmp_path / "new.yaml"
    new.write_text(HUGE_RTX4090.replace("rtx4090:", "rtx4090-1tb:"))
    assert GpuCatalog.load((str(new),)).override_notes() == []


def test_the_check_command_warns_that_a_profile_file_redefines_a_shipped_gpu(tmp_path, capsys):
    from recipe_checks.cli import main

    mine = tmp_path / "mine.yaml"
    mine.write_text(HUGE_RTX4090)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MIXED.replace("GPU", "rtx4090"))
    assert main(["check", str(recipe), "--gpu-profiles", str(mine), "-q"]) == 0
    assert f"recipe-checks: warning: {HUGE_NOTE.format(file=mine)}" in capsys.readouterr().err.splitlines()


def test_the_plugin_says_a_profile_file_redefines_a_shipped_gpu_in_header_summary_and_job_summary(
        pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    pytester.makefile(".yaml", r=MIXED.replace("GPU", "rtx4090"), mine=HUGE_RTX4090)
    note = HUGE_NOTE.format(file="mine.yaml")
    result = pytester.runpytest("r.yaml", "--gpu-profiles=mine.yaml", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"recipe-checks: WARNING: {note}", "*recipe-checks: GPU profiles redefined*",
                                 f"WARNING: {note}"])
    quiet = pytester.runpytest("r.yaml", "--gpu-profiles=mine.yaml", "-k", "schema", "-q", "-p", "no:cacheprovider")
    quiet.stdout.fnmatch_lines(["*recipe-checks: GPU profiles redefined*", f"WARNING: {note}"])  # no header under -q
    assert "> ⚠️ GPU profile 'rtx4090' in mine.yaml replaces the shipped profile" in (
        tmp_path / "summary.md").read_text(encoding="utf-8")


def test_gpus_with_a_profiles_file_that_cannot_be_read_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    from recipe_checks.cli import EXIT_USAGE, main

    assert main(["gpus", "--gpu-profiles", str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "missing.yaml: cannot read GPU profiles" in err and "Traceback" not in err
