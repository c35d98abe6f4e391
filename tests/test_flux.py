"""FLUX.1-dev LoRA and QLoRA with diffusers: the bundled transformer config, the traced flow-matching
step against a real CPU execution, the target-module rules on diffusers' module names, the shipped
recipes, and the optional diffusers extra.
"""

from __future__ import annotations

import pytest

from recipe_checks.memory.step import StepSettings, build_step_model, run_step
from recipe_checks.models.resolve import ResolvedModel, resolve_model_config
from tests.conftest import RECIPES

# imported before any pytester run, so that the inner runs share these modules (see tests/conftest.py)
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("diffusers.pipelines.flux.pipeline_flux")
pytest.importorskip("diffusers.training_utils")

# A small FluxTransformer2DModel: the architecture of FLUX.1-dev (double- and single-stream blocks,
# guidance embedding, 64-channel packed latents) at widths a CPU runs in milliseconds.
TINY_FLUX = {
    "_class_name": "FluxTransformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6],
    "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 32, "num_attention_heads": 2,
    "num_layers": 2, "num_single_layers": 3, "patch_size": 1, "pooled_projection_dim": 16,
}
PUBLISHED_LORA = (("init_lora_weights", "gaussian"), ("lora_alpha", 4), ("r", 4),
                  ("target_modules", ("to_k", "to_q", "to_v", "to_out.0")), ("task_type", None))
NF4 = (("compute_dtype", "bfloat16"), ("double_quant", False), ("quant_storage", "uint8"), ("quant_type", "nf4"),
       ("skip", ()))
DIFFUSION = (("guidance", True), ("guidance_scale", 1.0), ("height", 96), ("text_tokens", 7),
             ("weighting_scheme", "none"), ("width", 64))


def flux_settings(**changes) -> StepSettings:
    base = {"micro_batch": 2, "seq_len": 1, "gradient_accumulation": 4, "precision": "bfloat16",
            "weights_dtype": "bfloat16", "optim": "adamw_bnb_8bit", "lora": PUBLISHED_LORA, "diffusion": DIFFUSION}
    return StepSettings(**{**base, **changes})


EXACTNESS = {
    "lora": flux_settings(),
    "lora-checkpointing": flux_settings(gradient_checkpointing=True),
    "qlora": flux_settings(quant_4bit=NF4),
    "qlora-checkpointing": flux_settings(quant_4bit=NF4, gradient_checkpointing=True),
    "lora-fp16-adamw": flux_settings(precision="float16", weights_dtype="float16", optim="adamw_torch"),
}


def _trace(settings: StepSettings, real: bool):
    resolved = ResolvedModel(name="tiny-flux", config=dict(TINY_FLUX), source="test")
    return run_step(build_step_model(resolved, settings, real=real), settings)


@pytest.mark.slow  # 5-8 s a case: a real CPU step of the small transformer next to its fake trace
@pytest.mark.parametrize("case", EXACTNESS)
def test_the_fake_flux_trace_is_exact_against_a_real_cpu_step(case):
    settings = EXACTNESS[case]
    fake, real = _trace(settings, real=False), _trace(settings, real=True)
    assert fake.timeline.peak_bytes == real.timeline.peak_bytes
    assert fake.timeline.breakdown == real.timeline.breakdown
    assert fake.trainable_params == real.trainable_params > 0


@pytest.mark.slow  # 10-20 s: a fresh interpreter imports the libraries
def test_the_first_flux_trace_of_a_process_counts_what_a_later_one_counts():
    # importing diffusers.training_utils (and the modules it imports) creates tensors: imported first inside
    # the traced step, they were counted once per process, so that a pinned peak depended on which test had
    # traced FLUX before; only a fresh interpreter has not imported them yet
    import subprocess
    import sys

    script = (  # not importing this module, which imports diffusers.training_utils
        "from recipe_checks.memory.step import StepSettings, build_step_model, run_step\n"
        "from recipe_checks.models.resolve import ResolvedModel\n"
        f"resolved = ResolvedModel(name='tiny-flux', config={TINY_FLUX!r}, source='test')\n"
        f"settings = {flux_settings(gradient_accumulation=1)!r}\n"
        "first, second = (run_step(build_step_model(resolved, settings), settings, keep_curve=True) for _ in '12')\n"
        "print(first.curve == second.curve, first.timeline.peak_bytes, second.timeline.peak_bytes)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(RECIPES.parent))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "True", out.stdout


@pytest.mark.slow
def test_checkpointing_and_qlora_change_the_traced_flux_step():
    """The exactness cases differ where the features act: switching one off changes the trace."""
    plain, checkpointed = _trace(EXACTNESS["lora"], False), _trace(EXACTNESS["lora-checkpointing"], False)
    quantized = _trace(EXACTNESS["qlora"], False)
    assert checkpointed.timeline.breakdown["activations"] < plain.timeline.breakdown["activations"]
    assert quantized.timeline.breakdown["weights"] < plain.timeline.breakdown["weights"]
    assert quantized.quantized_layers > 0 and "quant_state" in quantized.timeline.breakdown


def test_the_bundled_flux_transformer_has_the_published_parameter_counts():
    """The HF flux-qlora post prints `trainable params: 4,669,440 || all params: 11,906,077,760` after
    add_adapter with the published LoraConfig: the bundled config gives those numbers."""
    from peft import LoraConfig

    from recipe_checks.models.skeleton import build_meta_model

    resolved = resolve_model_config("black-forest-labs/FLUX.1-dev", component="transformer")
    assert resolved.source.startswith("bundled config of black-forest-labs/FLUX.1-dev")
    model = build_meta_model(resolved, None, fresh=True)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    assert model.num_parameters(only_trainable=True) == 4_669_440
    assert model.num_parameters() == 11_906_077_760


# -- the recipes and their rules, through pytest ----------------------------------------------------
FLUX_QLORA = RECIPES / "flux1-dev-qlora-rtx4090.yaml"


def _recipe(**replacements: str) -> str:
    text = FLUX_QLORA.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_llm_target_names_on_flux_fail_with_rc201_and_the_flux_names(pytester):
    pytester.makefile(".yaml", flux_llm_names=_recipe(**{
        "target_modules: [to_k, to_q, to_v, to_out.0]": "target_modules: [q_proj, k_proj, v_proj, o_proj]"}))
    result = pytester.runpytest(".", "-k", "target-modules", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*RC201 target module 'q_proj' matches nothing in FluxTransformer2DModel",
        "*'q_proj' is the name in llama, mistral, mixtral. Did you mean",
        "*'to_q, to_k, to_v'?",
        "*RC201 target module 'o_proj' matches nothing in FluxTransformer2DModel",
        "*'o_proj' is the name in llama, mistral, mixtral. Did you mean",
        "*'to_out.0'?",
    ])


@pytest.mark.slow  # 40-90 s: the full-size step and its traced fixes
def test_the_published_bf16_lora_does_not_fit_an_rtx4090_and_its_traced_fix_is_qlora(pytester):
    # the shipped bf16 LoRA recipe is for a 48 GB card; against the 4090 the published 26 GB does not fit
    pytester.makefile(".yaml", flux_lora=(RECIPES / "flux1-dev-lora-bf16-a6000.yaml").read_text(encoding="utf-8"))
    result = pytester.runpytest(".", "--gpu=rtx4090", "--recipes-all-gpus", "-k", "vram", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, deselected=10)
    result.stdout.fnmatch_lines([
        "*RC601 peak 23.8 GiB does not fit the 22.8 GiB budget*",
        "*fixes, each traced: QLoRA*",
    ])


def test_a_flux_recipe_without_its_diffusion_section_fails_with_rc115(pytester):
    text = _recipe()
    start, end = text.index("diffusion:\n"), text.index("training:\n")
    pytester.makefile(".yaml", flux_no_size=text[:start] + text[end:])
    result = pytester.runpytest(".", "-k", "schema", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RC115 model 'black-forest-labs/FLUX.1-dev' is a diffusers FluxTransformer2DModel*"])


def test_without_diffusers_a_flux_recipe_names_the_extra_and_its_model_checks_wait_for_it(pytester, monkeypatch):
    from recipe_checks.models import skeleton

    skeleton._build_cached.cache_clear()  # a FLUX model built by an earlier test would hide the import
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # `import diffusers` raises ImportError
    pytester.makefile(".yaml", flux=_recipe())
    result = pytester.runpytest(".", "--gpu=rtx4090", "-k", "schema or target-modules or vram", "-p", "no:cacheprovider",
                                "-rA")
    skeleton._build_cached.cache_clear()
    result.assert_outcomes(failed=1, passed=2)  # the model's checks wait for the model, as for any model not built
    result.stdout.fnmatch_lines([
        ("*RC114 model 'black-forest-labs/FLUX.1-dev' is a diffusers FluxTransformer2DModel: diffusers is not "
         "installed*pip install 'recipe-checks?diffusers?'"),  # ? for fnmatch's brackets
        "*not run: RC201, RC202, * wait: the model could not be built (see flux.yaml::schema)",
    ])
    assert "Traceback" not in result.stdout.str()


def test_the_tiny_flux_fixture_has_the_full_models_modules_and_loads_from_the_hub_cache(tmp_path):
    from recipe_checks.fixtures.cache import ensure_fixture, module_layout
    from recipe_checks.models.skeleton import build_meta_model

    full = resolve_model_config("black-forest-labs/FLUX.1-dev", component="transformer")
    fixture = ensure_fixture(full, cache_dir=tmp_path, task_type="DIFFUSION")
    assert fixture.built and ensure_fixture(full, cache_dir=tmp_path, task_type="DIFFUSION").built is False
    model = diffusers.FluxTransformer2DModel.from_pretrained(str(fixture.path), local_files_only=True)
    assert module_layout(model) == module_layout(build_meta_model(full))
    assert (len(model.transformer_blocks), len(model.single_transformer_blocks)) == (2, 2)
    assert sum(p.numel() for p in model.parameters()) < 10**6


def test_the_fixes_offered_for_a_flux_step_are_those_that_act_on_it():
    """Checkpointing, a smaller micro-batch, QLoRA and an 8-bit optimizer change a FLUX step; a shorter
    max_seq_length (the diffusion step does not read it) and Liger's chunked loss (no LM head) do not."""
    from recipe_checks.memory.estimate import candidate_fixes

    settings = flux_settings(micro_batch=8, seq_len=2048, optim="adamw_torch")
    names = [name for name, _, _ in candidate_fixes(settings, None)]
    assert names == ["gradient checkpointing", "smaller micro-batch, same effective batch", "QLoRA (4-bit NF4 base)",
                     "paged 8-bit optimizer"]


@pytest.mark.slow  # 5-20 s: the tiny fixture is built, then stepped for real
@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_flux_cpu_step_trains_the_adapters_of_the_tiny_transformer_and_nothing_else(tmp_path, checkpointing):
    from recipe_checks.fixtures.cache import ensure_fixture
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate
    from recipe_checks.run.flux_step import run_flux_step

    text = _recipe(**{"gradient_checkpointing: true": f"gradient_checkpointing: {str(checkpointing).lower()}"})
    recipe = validate(load_text(text, "flux.yaml")).recipe
    resolved = resolve_model_config(recipe.model.id, component="transformer")
    report = run_flux_step(recipe, resolved, ensure_fixture(resolved, cache_dir=tmp_path, task_type="DIFFUSION"))
    assert report.finite_loss and len(report.losses) == 4  # the published 4 accumulation steps
    assert report.identity_max_diff == 0.0  # gaussian A, zero B: the adapted transformer predicts the base's
    assert report.trained_modules == 2 * 4 + 2 * 3  # to_q, to_k, to_v, to_out.0 in 2 double, 3 of them in 2 single blocks
    assert (report.no_gradient, report.unchanged, report.base_changed, report.not_frozen) == ([], [], [], [])
    assert (report.block_recomputes > 0) is checkpointing  # enable_gradient_checkpointing re-runs the blocks
    assert any("scaled down: image 128x80 (recipe: 768x512)" in note for note in report.notes)


def test_a_flux_recipe_gets_no_tokens_per_second_ceiling_and_no_training_run():
    """The LM throughput ceiling and cpu-train's tiny LM do not apply to a diffusion transformer: they say
    so instead of reading an LM config's num_hidden_layers or vocab_size from FLUX's."""
    from types import SimpleNamespace

    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.models.skeleton import build_meta_model
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate
    from recipe_checks.run.cpu_step import tiny_model
    from recipe_checks.throughput import recipe_ceiling

    recipe = validate(load_text(_recipe(), "flux.yaml")).recipe
    resolved = resolve_model_config(recipe.model.id, component="transformer")
    speed = recipe_ceiling(recipe, build_meta_model(resolved, None), GpuCatalog.load().get("rtx4090"))
    assert speed.tokens_per_second is None and speed.matmul_params > 11e9
    state = SimpleNamespace(memo={}, recipe=recipe, resolved_model=lambda: resolved)
    assert "a diffusers transformer's real step is checked by cpu-step" in tiny_model(state)
