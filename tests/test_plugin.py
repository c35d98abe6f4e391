"""The pytest plugin, end to end through pytester: collection, node ids, GPU selection, reports."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import GOOD_RECIPE, RECIPES

from recipe_checks.rules import CHECKS, CUDA_CHECKS, GPU_CHECKS  # every check of a recipe, in item order

# gpu-step and gpu-train: collected everywhere, skipped on a machine without CUDA (this one)
CUDA = len(CUDA_CHECKS)


@pytest.fixture(autouse=True)
def short_training_runs(request, monkeypatch):
    """cpu-train of 2 steps in the runs that are about the plugin, not about training (CI's 15 minutes);
    the shipped recipes are still trained for the full 30 steps in the test that checks them all."""
    if request.node.name != "test_shipped_recipes_all_pass_against_their_own_gpus":
        monkeypatch.setenv("PYTEST_ADDOPTS", "--recipes-train-steps=2")


@pytest.fixture
def shipped(pytester: pytest.Pytester):
    """The shipped recipes, copied into the pytester directory."""
    target = pytester.path / "recipes"
    shutil.copytree(RECIPES, target)
    return target


def test_shipped_recipes_all_pass_against_their_own_gpus(pytester, shipped):
    result = pytester.runpytest("recipes/", "-p", "no:cacheprovider", "-rs")
    recipes = len(list(shipped.glob("*.yaml")))  # mistral-7b-qlora-r8-qkvo: 2 GPUs, its GPU checks twice
    loaded = [yaml.safe_load(f.read_text(encoding="utf-8")) for f in shipped.glob("*.yaml")]
    # a diffusion transformer's recipe has no cpu-train (a Trainer run of a language model): it skips, saying so
    untrained = sum("diffusion" in recipe for recipe in loaded)
    assert untrained == 2  # the two FLUX.1-dev recipes
    ignoring = sum(bool((recipe.get("checks") or {}).get("ignore")) for recipe in loaded)  # + the `ignores` item
    result.assert_outcomes(passed=recipes * (len(CHECKS) - CUDA) + len(GPU_CHECKS) - CUDA - untrained + ignoring,
                           skipped=(recipes + 1) * CUDA + untrained)
    result.stdout.fnmatch_lines(["*cpu-step*"])  # -rs: the skip reasons are shown
    result.stdout.no_fnmatch_line("*fixtures build*")  # no advice to build a fixture where none is missing
    assert result.ret == 0


def test_main_job_with_gpu_rtx4090_is_green_and_deselects_the_others(pytester, shipped):
    result = pytester.runpytest("--gpu=rtx4090", "recipes/", "-p", "no:cacheprovider")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*recipe-checks: recipes for other GPUs*",
        "*declare other GPUs and were not checked against rtx4090:*",
        "*t4: recipes/mistral-7b-qlora-t4-fp16.yaml  (check with --gpu=t4)*",
        "*Check every recipe against rtx4090 with --recipes-all-gpus.*",
    ])
    outcomes = result.parseoutcomes()
    assert outcomes["deselected"] > 0 and "failed" not in outcomes


def test_collect_only_lists_one_item_per_recipe_and_check(pytester, shipped):
    result = pytester.runpytest("--gpu=rtx4090", "recipes/", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"recipes/llama3-8b-qlora-rtx4090.yaml::{check}" for check in CHECKS])
    listed = [line for line in result.outlines if "::" in line]
    assert len(listed) == len(set(listed))
    assert "recipes/mistral-7b-qlora-r8-qkvo.yaml::precision" in listed  # one GPU selected: no [gpu] suffix


def test_a_recipe_with_several_gpus_gets_the_gpu_in_gpu_dependent_ids(pytester):
    pytester.makefile(".yaml", two=GOOD_RECIPE.replace("gpu: rtx4090", "gpu: [rtx4090, a100-80gb]"))
    result = pytester.runpytest(".", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "two.yaml::schema",
        "two.yaml::target-modules",
        "two.yaml::quantization",
        "two.yaml::precision[rtx4090]",
        "two.yaml::precision[a100-80gb]",
        "two.yaml::optimizer[rtx4090]",
        "two.yaml::optimizer[a100-80gb]",
        "two.yaml::throughput[rtx4090]",
        "two.yaml::throughput[a100-80gb]",
        "two.yaml::vram[rtx4090]",
        "two.yaml::vram[a100-80gb]",
    ])


def test_k_selects_one_check(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest(".", "-k", "target-modules", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=len(CHECKS) - 1)


def test_failure_names_rule_file_line_and_fix(pytester):
    pytester.makefile(".yaml", bad=GOOD_RECIPE.replace("optim: paged_adamw_8bit", "optim: adamw_torch"))
    result = pytester.runpytest(".", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(CHECKS) - 1 - CUDA, failed=1, skipped=CUDA)  # a policy finding does not stop the vram verdict
    result.stdout.fnmatch_lines([
        "*_ optimizer _*",
        "RC301 QLoRA recipe uses optimizer 'adamw_torch', which is not paged",
        "  --> bad.yaml:14:10",
        "14 |   optim: adamw_torch",
        "   |          ^^^^^^^^^^^",
        "why: QLoRA runs close to the memory limit*",
        "help: set training.optim: paged_adamw_8bit*",
        "FAILED bad.yaml::optimizer*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_malformed_yaml_is_a_finding_and_other_recipes_are_still_checked(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    pytester.makefile(".yaml", broken="model: x\nlora:\n  r: 16\n lora_alpha: 32\n")
    result = pytester.runpytest(".", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=len(CHECKS) - CUDA, failed=1, skipped=len(CHECKS) - 1 + CUDA)
    result.stdout.fnmatch_lines([
        "RC101 the file is not valid YAML:*",
        "  --> broken.yaml:4:*",
        "*SKIPPED*not checked: broken.yaml could not be read as a recipe (see broken.yaml::schema)*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_empty_and_binary_yaml_files_are_said_to_be_skipped_in_a_run_that_checks_recipes(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    pytester.makefile(".yaml", empty="")
    (pytester.path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    result = pytester.runpytest(".", "-p", "no:cacheprovider", "-k", "schema")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*recipe-checks: YAML files skipped, not recipes*",
                                 f"{pytester.path / 'binary.yaml'}: skipped: cannot be read: it is not UTF-8 text*",
                                 f"{pytester.path / 'empty.yaml'}: skipped: an empty file"])
    (pytester.path / "good.yaml").unlink()  # a host project's run that checks no recipe: nothing of ours to say
    pytester.makepyfile(test_host="def test_host():\n    pass\n")
    result = pytester.runpytest(".", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "not recipes" not in result.stdout.str()


@pytest.mark.parametrize(
    ("replace", "by", "rule"),
    [
        ("lora_alpha: 32", "lora_alfa: 32", "RC102 unknown key 'lora_alfa' in lora"),
        ("per_device_train_batch_size: 1", "per_device_train_batch_size: -1", "RC103 training.per_device_train_batch_size*"),
        ("bf16: true", "bf16: 'true'", "RC103 training.bf16: input should be a valid boolean*"),
        ("gpu: rtx4090", "gpu: rtx4099", "RC105 'rtx4099' is not a known GPU"),
        # a model whose config is not here offline is a warning ('not checked'): --recipes-strict fails it
        ("model: meta-llama/Llama-3.1-8B", "model: meta-llama/Llama-3.1-8B-typo",
         "RC106 (warning) model 'meta-llama/Llama-3.1-8B-typo' has no config.json here: not checked*"),
    ],
)
def test_bad_input_is_a_schema_finding_with_file_and_line(pytester, replace, by, rule):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    pytester.makefile(".yaml", bad=GOOD_RECIPE.replace(replace, by))
    result = pytester.runpytest(".", "-p", "no:cacheprovider", *(["--recipes-strict"] if "(warning)" in rule else []))
    result.stdout.fnmatch_lines([rule, "  --> bad.yaml:*"])
    assert "Traceback" not in result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1 and outcomes["passed"] >= len(CHECKS) - CUDA  # good.yaml fully checked


def test_unknown_gpu_option_is_a_usage_error_with_the_nearest_name(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest("--gpu=rtx4099", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpu: 'rtx4099' is not a known GPU; did you mean 'rtx4090'? Known: a100-40gb*"])


def test_gpu_names_are_forgiving(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest(".", "--gpu=RTX 4090", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(CHECKS) - CUDA, skipped=CUDA)


def test_all_gpus_checks_every_recipe_against_the_given_gpu(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest(".", "--gpu=t4", "--recipes-all-gpus", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(CHECKS) - 1 - CUDA, failed=1, skipped=CUDA)  # bf16 on a T4: precision fails
    result.stdout.fnmatch_lines(["RC404 bnb_4bit_compute_dtype bfloat16 on t4*", "RC401 bf16 training on t4*"])


def test_a_recipe_without_gpu_skips_gpu_checks_with_the_way_to_fix_it(pytester):
    pytester.makefile(".yaml", nogpu=GOOD_RECIPE.replace("hardware:\n  gpu: rtx4090\n", ""))
    result = pytester.runpytest(".", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(CHECKS) - len(GPU_CHECKS), skipped=len(GPU_CHECKS))
    result.stdout.fnmatch_lines(["*names no target GPU; set hardware.gpu in the recipe or pass --gpu=NAME*"])


def test_report_header_names_target_local_device_and_versions(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest(".", "--gpu=rtx4090", "--collect-only", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "recipe-checks *: target GPU: rtx4090 (NVIDIA GeForce RTX 4090, 24.0 GiB, sm_89, bf16 yes, fp8 yes)",
        "recipe-checks: local device: * (checks use the target profile, not this machine)",
        "recipe-checks: torch *, transformers *, peft *, bitsandbytes *",
    ])


def test_warnings_show_in_the_summary_and_fail_with_strict(pytester):
    fp16 = GOOD_RECIPE.replace("bf16: true", "fp16: true").replace("bfloat16", "float16")
    pytester.makefile(".yaml", warn=fp16)
    result = pytester.runpytest(".", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(CHECKS) - CUDA, skipped=CUDA, warnings=1)
    result.stdout.fnmatch_lines(["*RecipeWarning: RC406 fp16 training on a llama model*"])
    strict = pytester.runpytest(".", "--recipes-strict", "-p", "no:cacheprovider")
    strict.assert_outcomes(passed=len(CHECKS) - 1 - CUDA, failed=1, skipped=CUDA)


def test_recipe_ignore_with_reason_suppresses_and_is_recorded(pytester):
    text = GOOD_RECIPE.replace("optim: paged_adamw_8bit", "optim: adamw_torch")
    text += "checks:\n  ignore: {RC301: \"72 GB of host RAM is not available for paging on this box\"}\n"
    pytester.makefile(".yaml", ignored=text)
    result = pytester.runpytest(".", "-p", "no:cacheprovider", "--junitxml=report.xml")
    result.assert_outcomes(passed=len(CHECKS) + 1 - CUDA, skipped=CUDA)  # and the `ignores` item: the ignore is used
    assert 'name="RC301 (ignored)"' in (pytester.path / "report.xml").read_text()


def test_stale_and_misspelt_ignores_are_reported(pytester):
    text = GOOD_RECIPE + "checks:\n  ignore: {RC301: \"no longer needed\", RC3O2: \"typo\"}\n"
    pytester.makefile(".yaml", stale=text)
    result = pytester.runpytest(".", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "RC109 ignoring RC301 (qlora-paged-optimizer) suppresses nothing in this recipe",
        "RC109 ignored rule 'RC3O2' does not exist",
        "help: did you mean 'RC302'*",
    ])


def test_project_wide_ignore_from_the_ini(pytester):
    pytester.makefile(".yaml", bad=GOOD_RECIPE.replace("optim: paged_adamw_8bit", "optim: adamw_torch"))
    pytester.makeini("[pytest]\nrecipe_checks_ignore =\n    RC301: our cluster nodes have no spare host RAM\n")
    result = pytester.runpytest(".", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(CHECKS) - CUDA, skipped=CUDA)


def test_junit_shows_one_testcase_per_recipe_and_check(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    pytester.runpytest(".", "-p", "no:cacheprovider", "--junitxml=report.xml")
    xml = (pytester.path / "report.xml").read_text()
    for check in CHECKS:
        assert f'classname="good.yaml" name="{check}"' in xml
    assert 'name="RC208"' in xml  # the coverage report travels as a property


def test_yaml_files_without_the_marker_key_are_not_recipes(pytester):
    pytester.makefile(".yaml", other="name: ci\njobs: {}\n")
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest(".", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert "other.yaml" not in result.stdout.str()


def test_the_marker_key_is_configurable(pytester):
    pytester.makefile(".yaml", custom=GOOD_RECIPE.replace("model:", "base_model:", 1))
    pytester.makeini("[pytest]\nrecipe_checks_key = base_model\n")
    result = pytester.runpytest(".", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["custom.yaml::schema"])


def test_gpu_marker_skips_a_recipe_item_with_a_reason_without_cuda(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                if item.name == "schema":
                    item.add_marker(pytest.mark.gpu(min_memory_gib=8))
        """
    )
    result = pytester.runpytest("good.yaml", "-k", "schema", "-rs", "-p", "no:cacheprovider")
    import torch

    if torch.cuda.is_available():
        result.assert_outcomes(passed=1, deselected=len(CHECKS) - 1)
    else:
        result.assert_outcomes(skipped=1, deselected=len(CHECKS) - 1)
        result.stdout.fnmatch_lines(["*needs a CUDA GPU: torch.cuda.is_available() is False here*"])


def test_the_host_projects_own_gpu_marker_is_left_alone(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_the_hosts_own_gpu_test():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_trust_remote_code_needs_the_opt_in_flag(pytester):
    import json

    from recipe_checks.models.resolve import resolve_model_config

    # Llama's config with an auto_map: under trust_remote_code transformers would run the repository's code
    llama = resolve_model_config("meta-llama/Llama-3.1-8B").config
    (pytester.path / "config.json").write_text(json.dumps({**llama, "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    pytester.makefile(
        ".yaml",
        remote=GOOD_RECIPE.replace("model: meta-llama/Llama-3.1-8B",
                                   "model: {id: meta-llama/Llama-3.1-8B, config: config.json, trust_remote_code: true}"),
    )
    refused = pytester.runpytest(".", "-p", "no:cacheprovider")
    refused.stdout.fnmatch_lines(["RC107 the recipe asks to run the model repository's code*"])
    allowed = pytester.runpytest(".", "--recipes-trust-remote-code", "-p", "no:cacheprovider")
    allowed.assert_outcomes(passed=len(CHECKS) - CUDA, skipped=CUDA)


# -- the plugin stays out of sessions that do not ask for it --------------------------------------------


@pytest.fixture
def hydra_project(pytester: pytest.Pytester):
    """An unrelated project: a Hydra-style conf/config.yaml with a `model:` key, and its own tests."""
    pytester.mkdir("conf")
    (pytester.path / "conf" / "config.yaml").write_text("model: resnet50\noptimizer: {lr: 0.1}\n")
    pytester.makepyfile(test_own="def test_the_projects_own_test():\n    assert True\n")
    return pytester


def test_an_unrelated_project_with_a_model_key_in_its_yaml_runs_green(hydra_project, shipped):
    result = hydra_project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert "config.yaml" not in result.stdout.str()
    # the main command still collects the recipes it points at, and nothing else
    main = hydra_project.runpytest("--gpu=rtx4090", "recipes/", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert "recipes/llama3-8b-qlora-rtx4090.yaml::schema" in main.stdout.str()
    assert "config.yaml" not in main.stdout.str()


def test_recipe_checks_paths_in_the_ini_collects_recipes_on_a_plain_run(hydra_project):
    hydra_project.mkdir("recipes")
    (hydra_project.path / "recipes" / "good.yaml").write_text(GOOD_RECIPE)
    hydra_project.makeini("[pytest]\nrecipe_checks_paths = recipes\n")
    result = hydra_project.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["recipes/good.yaml::schema", "test_own.py::test_the_projects_own_test"])
    assert "config.yaml" not in result.stdout.str()


def test_a_recipe_option_searches_the_collected_paths(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    plain = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert "good.yaml" not in plain.stdout.str()
    asked = pytester.runpytest("--gpu=rtx4090", "--collect-only", "-q", "-p", "no:cacheprovider")
    asked.stdout.fnmatch_lines(["good.yaml::schema"])


def test_verbose_node_ids_can_be_pasted_back(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest("good.yaml", "-v", "-k", "schema", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["good.yaml::schema PASSED*"])
    again = pytester.runpytest("good.yaml::schema", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=1)


# -- every finding at once ------------------------------------------------------------------------------


def test_an_unknown_lora_key_and_foreign_targets_are_reported_in_one_run(pytester):
    text = GOOD_RECIPE.replace("lora_alpha: 32", "lora_alfa: 32").replace(
        "target_modules: [q_proj, k_proj, v_proj, o_proj]", "target_modules: [query_key_value, dense]")
    pytester.makefile(".yaml", both=text)
    result = pytester.runpytest("both.yaml", "-k", "not vram", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "RC102 unknown key 'lora_alfa' in lora",
        "*",
    ], consecutive=False)
    result.stdout.fnmatch_lines(["RC201 target module 'query_key_value' matches nothing in LlamaForCausalLM"])
    # schema and target-modules fail; cpu-step and cpu-train wait for lora, gpu-step and gpu-train for CUDA
    result.assert_outcomes(failed=2, passed=len(CHECKS) - 3 - 2 - CUDA, skipped=2 + CUDA, deselected=1)


def test_an_invalid_value_stops_only_the_rules_that_read_its_section(pytester):
    text = GOOD_RECIPE.replace("r: 16", "r: 0")  # lora is broken; training, quantization are not
    text = text.replace("optim: paged_adamw_8bit", "optim: adamw_torch")
    pytester.makefile(".yaml", partial=text)
    result = pytester.runpytest("partial.yaml", "-k", "not vram", "-v", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["partial.yaml::target-modules SKIPPED (not checked: lora has an inval*"])
    result.stdout.fnmatch_lines(["partial.yaml::precision PASSED*"])
    result.stdout.fnmatch_lines(["RC103 lora.r: *"])
    assert "RC301 QLoRA recipe uses optimizer 'adamw_torch'" not in result.stdout.str()  # RC301 reads lora too
    outcomes = result.parseoutcomes()  # target-modules and throughput (the method) read lora
    assert outcomes["failed"] == 1 and outcomes["skipped"] == 4 + CUDA and outcomes["passed"] == 3, outcomes


def test_a_qlora_recipe_failing_rc301_still_gets_its_vram_verdict(pytester):
    pytester.makefile(".yaml", bad=GOOD_RECIPE.replace("optim: paged_adamw_8bit", "optim: adamw_torch"))
    result = pytester.runpytest("bad.yaml", "-rA", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*RC601 (info) peak * GiB of the 22.8 GiB budget on rtx4090*", "PASSED bad.yaml::vram"],
                                consecutive=False)
    result.stdout.fnmatch_lines(["FAILED bad.yaml::optimizer*"])


def test_a_misspelt_gpu_is_reported_under_gpu_selection_not_deselected(pytester):
    pytester.makefile(".yaml", typo=GOOD_RECIPE.replace("gpu: rtx4090", "gpu: rtx4099"))
    result = pytester.runpytest("--gpu=rtx4090", "typo.yaml", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["RC105 'rtx4099' is not a known GPU", "*not checked: 'rtx4099' is not a known GPU*"],
                                consecutive=False)
    assert "deselected" not in result.parseoutcomes()


def test_stale_ignores_of_schema_and_vram_rules_are_reported_by_the_post_pass(pytester):
    text = GOOD_RECIPE + "checks:\n  ignore: {RC102: \"old typo\", RC601: \"it used to be too big\"}\n"
    pytester.makefile(".yaml", stale=text)
    result = pytester.runpytest("stale.yaml", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "RC109 ignoring RC102 (unknown-key) suppresses nothing in this recipe",
        "*",
        "RC109 ignoring RC601 (vram-budget) suppresses nothing in this recipe",
    ], consecutive=False)
    result.stdout.fnmatch_lines(["FAILED stale.yaml::ignores*"])
    # a check that did not run is not judged: without the vram item, only the schema ignore is stale
    unvram = pytester.runpytest("stale.yaml", "-k", "not vram", "-p", "no:cacheprovider")
    assert "RC109 ignoring RC102" in unvram.stdout.str() and "RC109 ignoring RC601" not in unvram.stdout.str()


def test_xdist_keeps_the_deselection_count_and_the_other_gpus_summary(pytester, shipped):
    pytest.importorskip("xdist")
    result = pytester.runpytest("-n", "2", "--gpu=rtx4090", "recipes/", "-k", "schema", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "*recipe-checks: recipes for other GPUs*",
        "*t4: recipes/mistral-7b-qlora-t4-fp16.yaml  (check with --gpu=t4)*",
    ])
    assert result.parseoutcomes()["deselected"] >= 35, result.stdout.str()


def test_an_out_of_range_library_version_is_warned_about_at_session_start(pytester, monkeypatch):
    import recipe_checks.compat

    real = recipe_checks.compat.installed_version
    monkeypatch.setattr(recipe_checks.compat, "installed_version",
                        lambda dist: "4.55.0" if dist == "transformers" else real(dist))
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest("good.yaml", "-k", "schema", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "recipe-checks: WARNING: transformers 4.55.0 is below the tested range 5.20-*",
        "*RecipeVersionWarning: transformers 4.55.0 is below the tested range*",
    ], consecutive=False)
    host = pytester.runpytest("-p", "no:cacheprovider")  # a run that checks no recipe: nothing of ours
    assert "recipe-checks:" not in host.stdout.str() and "WARNING" not in host.stdout.str()


def test_an_ignore_of_a_rule_that_waits_for_a_broken_section_is_not_judged(pytester):
    # lora is broken (r: 0): RC301 reads lora and waits, while the optimizer check's other rules run
    text = GOOD_RECIPE.replace("r: 16", "r: 0") + "checks:\n  ignore: {RC301: \"no host RAM to page into\"}\n"
    pytester.makefile(".yaml", waiting=text)
    result = pytester.runpytest("waiting.yaml", "-k", "not vram", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["RC103 lora.r: *"])
    assert "RC109" not in result.stdout.str()


HOST_WITH_ITS_OWN_GPU_OPTION = """
import pytest

def pytest_addoption(parser):
    parser.addoption("--gpu", default="none", help="the host's own: which GPU its tests run on")

@pytest.fixture
def gpu(request):
    return request.config.getoption("gpu")
"""


def test_a_host_project_with_its_own_gpu_option_and_fixture_keeps_them(pytester):
    """pytest refuses an option string twice: a host conftest.py with its own --gpu keeps it, and recipe-checks
    takes the target GPU from --recipes-gpu, saying so in one line."""
    pytester.makeconftest(HOST_WITH_ITS_OWN_GPU_OPTION)
    pytester.makepyfile(test_host="def test_host_gpu(gpu):\n    assert gpu == 'cuda:1'\n")
    pytester.makefile(".yaml", good=GOOD_RECIPE.replace("gpu: rtx4090", "gpu: [rtx4090, a100-80gb]"))
    host = pytester.runpytest("--gpu=cuda:1", "-p", "no:cacheprovider")
    host.assert_outcomes(passed=1)  # the host's test, and no recipe: a plain run checks none
    host.stdout.no_fnmatch_line("recipe-checks*")  # no header line of ours (the plugins line names us)
    result = pytester.runpytest("--gpu=cuda:1", "--recipes-gpu=rtx4090", ".", "-k", "schema or host_gpu",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, deselected=result.parseoutcomes()["deselected"])
    result.stdout.fnmatch_lines([
        "recipe-checks *: target GPU: *RTX 4090*",
        "recipe-checks: --gpu is this project's own option (a conftest.py or plugin defines it): name the target "
        "GPU with --recipes-gpu=NAME, or recipe_checks_gpu in the ini file",
    ])
    unknown = pytester.runpytest("--recipes-gpu=rtx4099", ".", "-p", "no:cacheprovider")
    unknown.stderr.fnmatch_lines(["*--recipes-gpu: *rtx4099*"])  # the flag that works here, not --gpu
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR


def test_recipes_gpu_and_the_ini_key_name_the_target_gpu_as_gpu_does(pytester):
    pytester.makefile(".yaml", good=GOOD_RECIPE.replace("gpu: rtx4090", "gpu: [rtx4090, a100-80gb]"))
    headers = []
    for args in (["--gpu=a100-80gb"], ["--recipes-gpu=a100-80gb"]):
        result = pytester.runpytest(*args, "good.yaml", "-k", "schema", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        headers.append([line for line in result.outlines if "target GPU" in line])
    pytester.makeini("[pytest]\nrecipe_checks_gpu = a100-80gb\n")
    result = pytester.runpytest("good.yaml", "-k", "schema", "-p", "no:cacheprovider")
    headers.append([line for line in result.outlines if "target GPU" in line])
    assert headers[0] == headers[1] == headers[2] and "A100" in headers[0][0], headers
    assert "own option" not in result.stdout.str()


@pytest.mark.parametrize("layout", ["package", "module"])
def test_a_host_project_with_its_own_checks_package_imports_its_own(pytester, layout):
    """recipe-checks' import name is recipe_checks: a host's `checks` package or checks.py stays the host's,
    with the plugin loaded and checking recipes in the same run."""
    source = "NAME = 'the host project'\n"
    if layout == "package":
        pytester.mkpydir("checks").joinpath("__init__.py").write_text(source)
    else:
        pytester.makepyfile(checks=source)
    pytester.makepyfile(test_host="from checks import NAME\n\ndef test_host():\n    assert NAME == 'the host project'\n")
    pytester.makefile(".yaml", good=GOOD_RECIPE)
    result = pytester.runpytest("--gpu=rtx4090", ".", "-k", "schema or host", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, deselected=result.parseoutcomes()["deselected"])
