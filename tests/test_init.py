"""`recipe-checks init`: the recipes it writes pass every check, its search finds the best candidate
that fits with few traces, and it writes nothing that does not fit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from checks.cli import main
from checks.engine import check_recipe, run_check
from checks.gpus import GIB, GpuCatalog
from checks.init import search
from checks.init.recipe_text import Plan
from checks.options import Options

CATALOG = GpuCatalog.load()


def _init(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "recipe.yaml"
    return main(["init", *args, "--output", str(out)]), out


def _assert_passes_every_check(path: Path, gpu: str, *, cpu_step: bool = False) -> None:
    """The written recipe, checked by the engine as `recipe-checks check --with-vram` checks it."""
    state, results = check_recipe(path, Options(gpus=(gpu,)), CATALOG)
    if cpu_step:
        results.append(run_check(state, "cpu-step"))
    errors = [f"{f.rule_id} {f.message}" for r in results for f in r.errors]
    assert errors == []
    assert not [r.check for r in results if r.error is not None]
    vram = next(r for r in results if r.check == "vram")
    assert vram.skipped is None and [f.rule_id for f in vram.infos] == ["RC601"]
    assert "of the" in vram.infos[0].message and "budget" in vram.infos[0].message  # the fitting verdict
    if cpu_step:
        step = results[-1]
        assert step.skipped is None and step.judged  # the real step ran and reached its verdicts


def test_init_writes_a_small_recipe_that_fits_and_passes_every_check(tmp_path, capsys):
    code, out = _init(tmp_path, "HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4060", "--seq", "128", "--batch", "2")
    printed = capsys.readouterr().out
    assert code == 0, printed
    text = out.read_text()
    assert "-> LoRA" in text  # the header marks the chosen candidate among those traced
    assert text.count(" fits") >= 1 and "peak" in text
    assert "target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]" in text
    assert "bf16: true" in text
    assert f"wrote {out}" in printed
    _assert_passes_every_check(out, "rtx4060")


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "recipe.yaml"
    out.write_text("mine\n")
    assert main(["init", "HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4060", "--output", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "mine\n"


@pytest.mark.parametrize("args, message", [
    (["HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4099"], "'rtx4099' is not a known GPU; did you mean 'rtx4090'?"),
    (["meta-llama/Llama-3.1-8C", "--gpu", "rtx4090"], "has no config.json here"),
    (["openai-community/gpt2", "--gpu", "rtx4090", "--seq", "4096"], "longer than openai-community/gpt2's 1024"),
])
def test_bad_requests_exit_2_saying_why(tmp_path, capsys, args, message):
    code, out = _init(tmp_path, *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_default_output_is_named_after_model_method_and_gpu():
    from checks.cli.init import default_output

    assert default_output("meta-llama/Llama-3.1-8B", "qlora", "rtx4090") == "llama-3.1-8b-qlora-rtx4090.yaml"


@pytest.mark.parametrize("gpu, model_type, precision", [
    ("rtx4090", "llama", "bfloat16"), ("t4", "llama", "float16"), ("t4", "gemma2", "float32"),
])
def test_precision_is_bf16_where_the_gpu_has_it_else_fp16_unless_the_family_overflows(gpu, model_type, precision):
    assert search.precision_for(CATALOG.get(gpu), model_type)[0] == precision


def test_targets_are_every_linear_projection_and_conv1d_says_fan_in_fan_out():
    from checks.models.resolve import resolve_model_config
    from checks.models.skeleton import build_meta_model

    phi3 = build_meta_model(resolve_model_config("microsoft/Phi-3-mini-4k-instruct"), "CAUSAL_LM")
    names, conv1d = search.linear_targets(phi3)
    assert sorted(names) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"] and not conv1d
    names, conv1d = search.linear_targets(build_meta_model(resolve_model_config("openai-community/gpt2"), "CAUSAL_LM"))
    assert sorted(names) == ["c_attn", "c_fc", "c_proj"] and conv1d


def _synthetic_memory(recipe) -> float:
    """A memory model with the estimate's monotonicity: GiB of one step for a candidate recipe."""
    t = recipe.training
    chunked = bool((t.model_extra or {}).get("use_liger_kernel"))
    activations = t.per_device_train_batch_size * (0.6 if t.gradient_checkpointing else 2.5) * (0.5 if chunked else 1)
    return activations + (1.2 if recipe.is_4bit else 4.0) + (0.3 if "8bit" in t.optim else 1.1)


@pytest.mark.parametrize("budget_gib", [1.5, 2.5, 4.0, 5.5, 6.1, 7.0, 9.0, 12.0, 20.0, 45.0])
def test_the_search_finds_the_best_ranked_candidate_that_fits_as_brute_force_does(monkeypatch, budget_gib):
    import checks.memory.estimate as memory_estimate

    def fake_estimate(recipe, resolved, gpu, *, with_fixes=True):
        peak = int(_synthetic_memory(recipe) * GIB)
        return SimpleNamespace(peak_bytes=peak, budget_bytes=int(budget_gib * GIB), fits=peak <= budget_gib * GIB)

    monkeypatch.setattr(memory_estimate, "estimate", fake_estimate)
    gpu = CATALOG.get("rtx4090")
    spec, resolved, model = search.build_spec("HuggingFaceTB/SmolLM2-135M", gpu, "lora", 2048, 16)
    proposal = search.propose(spec, resolved, model, gpu, CATALOG)

    order = search.tiers(spec, model, gpu)
    every = [Plan(q, c, p, ch, mb) for (q, c) in order for (p, ch) in search.saver_sets(spec, q)
             for mb in search.micro_batches(16, 2048)]
    fitting = [p for p in every
               if _synthetic_memory(search.candidate_state(spec, p, CATALOG).recipe) <= budget_gib]
    best = min(fitting, key=lambda p: (order.index((p.quantized, p.checkpointing)), -p.micro_batch,
                                       search.saver_sets(spec, p.quantized).index((p.paged_optimizer, p.chunked_loss))),
               default=None)
    assert proposal.chosen == best
    assert len(proposal.tried) <= search.DEFAULT_MAX_TRACES < len(every)
    assert all(t.fits == (t.peak_bytes <= budget_gib * GIB) for t in proposal.tried)


def test_lora_is_searched_before_qlora_and_checkpointing_after_no_checkpointing():
    gpu = CATALOG.get("rtx4090")
    spec, _, model = search.build_spec("HuggingFaceTB/SmolLM2-135M", gpu, "lora", 2048, 16)
    assert search.tiers(spec, model, gpu) == [(False, False), (True, False), (False, True), (True, True)]
    assert search.saver_sets(spec, False) == [(False, False), (True, False), (False, True), (True, True)]
    assert search.saver_sets(spec, True) == [(True, False), (True, True)]  # QLoRA always pages (RC301)


# Five model x GPU pairs, each a full-size search and trace (each takes 10-90 s on a shared 2-core box).
PAIRS = [
    ("HuggingFaceTB/SmolLM2-135M", "rtx4060", "lora"),
    ("meta-llama/Meta-Llama-3-8B", "rtx4090", "qlora"),
    ("Qwen/Qwen2.5-7B", "a100-80gb", "lora"),
    ("mistralai/Mistral-7B-v0.3", "rtx3090", "lora"),
    ("microsoft/Phi-3-mini-4k-instruct", "t4", "lora"),
]


@pytest.mark.slow
@pytest.mark.parametrize("model, gpu, method", PAIRS, ids=[f"{m.split('/')[-1]}-{g}-{k}" for m, g, k in PAIRS])
def test_init_writes_recipes_that_pass_every_check_for_five_model_gpu_pairs(tmp_path, capsys, model, gpu, method):
    code, out = _init(tmp_path, model, "--gpu", gpu, "--method", method)
    printed = capsys.readouterr().out
    assert code == 0, printed
    text = out.read_text()
    if method == "qlora":
        assert "load_in_4bit: true" in text and "optim: paged_adamw_8bit" in text
    if gpu == "t4":
        assert "fp16: true" in text and "bf16: true" not in text and "torch_dtype: float16" in text
    _assert_passes_every_check(out, gpu, cpu_step=True)


@pytest.mark.slow
def test_when_nothing_fits_init_says_what_it_tried_and_writes_nothing(tmp_path, capsys):
    code, out = _init(tmp_path, "meta-llama/Meta-Llama-3-70B", "--gpu", "rtx4060", "--method", "full")
    printed = capsys.readouterr().out
    assert code == 1
    assert not out.exists()
    assert "no candidate fits" in printed and "no recipe written" in printed
    tried = [line for line in printed.splitlines() if "micro-batch 1 x 16" in line]
    assert tried and all("does not fit" in line for line in tried)
    assert any("checkpointing, paged 8-bit AdamW, chunked loss" in line for line in tried)


def test_output_dash_prints_the_recipe_on_stdout_and_the_report_on_stderr(capsys):
    from checks.recipe.load import load_text
    from checks.recipe.validate import validate

    assert main(["init", "HuggingFaceTB/SmolLM2-135M", "--gpu", "t4", "--seq", "128", "--batch", "1",
                 "--output", "-"]) == 0
    captured = capsys.readouterr()
    recipe = validate(load_text(captured.out, "<stdout>")).recipe
    assert recipe is not None and recipe.training.fp16 and recipe.hardware.gpu == ["t4"]
    assert "wrote <stdout>" in captured.err and "micro-batch 1 x 1" in captured.err


def test_gemma2_on_a_t4_gets_fp32_and_eager_attention_which_its_trace_needs():
    spec, _, _ = search.build_spec("google/gemma-2-2b", CATALOG.get("t4"), "lora", 128, 1)
    assert (spec.precision, spec.attn_implementation) == ("float32", "eager")
    text = search.recipe_text(spec, Plan(False, False, False, False, 1))
    assert "attn_implementation: eager" in text and "fp16: true" not in text and "bf16: true" not in text
