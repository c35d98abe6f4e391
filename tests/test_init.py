"""`recipe-checks init`: the recipes it writes pass every check, its search finds the best candidate
that fits with few traces, and it writes nothing that does not fit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from recipe_checks.cli import main
from recipe_checks.engine import check_recipe, run_check
from recipe_checks.gpus import GIB, GpuCatalog
from recipe_checks.init import search
from recipe_checks.init.recipe_text import Plan
from recipe_checks.options import Options

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
    from recipe_checks.cli.init import default_output

    assert default_output("meta-llama/Llama-3.1-8B", "qlora", "rtx4090") == "llama-3.1-8b-qlora-rtx4090.yaml"
    assert default_output("meta-llama/Llama-3.1-70B", "lora", "a100-80gb", 8) == "llama-3.1-70b-lora-8xa100-80gb.yaml"


@pytest.mark.parametrize("gpu, model_type, precision", [
    ("rtx4090", "llama", "bfloat16"), ("t4", "llama", "float16"), ("t4", "gemma2", "float32"),
])
def test_precision_is_bf16_where_the_gpu_has_it_else_fp16_unless_the_family_overflows(gpu, model_type, precision):
    assert search.precision_for(CATALOG.get(gpu), model_type)[0] == precision


def test_targets_are_every_linear_projection_and_conv1d_says_fan_in_fan_out():
    from recipe_checks.models.resolve import resolve_model_config
    from recipe_checks.models.skeleton import build_meta_model

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
    import recipe_checks.memory.estimate as memory_estimate

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
    from recipe_checks.recipe.load import load_text
    from recipe_checks.recipe.validate import validate

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


# Several GPUs (--gpus N): the strategies of each tier, DDP, FSDP2, ZeRO-3 with the optimizer offloaded.

def test_the_strategies_are_ddp_then_fsdp2_then_zero3_offload_for_full_and_qlora_is_ddp_only():
    gpu = CATALOG.get("rtx4090")
    for method, quantized, expected in [("lora", False, ("ddp", "fsdp")), ("lora", True, ("ddp",)),
                                        ("qlora", True, ("ddp",)), ("full", False, ("ddp", "fsdp", "zero3"))]:
        spec, _, _ = search.build_spec("HuggingFaceTB/SmolLM2-135M", gpu, method, 128, 8, gpus=4)
        assert search.strategies(spec, quantized) == expected
    assert search.saver_sets(spec, False, "fsdp") == [(False, False), (False, True)]  # sharded states: no paging
    assert search.micro_batches(16, 128, gpus=4) == [1, 2, 4]  # each GPU takes 16 / 4 of the effective batch


def _synthetic_sharded_memory(recipe) -> float:
    """_synthetic_memory on rank 0 of a distributed recipe: DDP adds its gradient buckets, FSDP2 shards
    weights and optimizer states (one block all-gathered), ZeRO-3's offload moves the states to the host."""
    single = _synthetic_memory(recipe)
    d = recipe.distributed
    if d is None or d.strategy == "ddp":
        return single + (0.2 if d else 0)
    t = recipe.training
    weights = 1.2 if recipe.is_4bit else 4.0
    states = single - weights - t.per_device_train_batch_size * (0.6 if t.gradient_checkpointing else 2.5) * (
        0.5 if (t.model_extra or {}).get("use_liger_kernel") else 1)
    return single - weights - states + weights / d.world_size + 0.5 + (0 if d.strategy == "zero3" else states / d.size)


@pytest.mark.parametrize("method, budget_gib", [("lora", b) for b in (1.5, 3.0, 4.5, 6.0)]
                         + [("full", b) for b in (1.2, 1.9, 3.0, 5.0, 7.0)])
def test_on_several_gpus_the_search_finds_the_best_ranked_sharding_that_fits_as_brute_force_does(
        monkeypatch, method, budget_gib):
    import recipe_checks.memory.estimate as memory_estimate

    def fake_estimate(recipe, resolved, gpu, *, with_fixes=True):
        peak = int(_synthetic_sharded_memory(recipe) * GIB)
        return SimpleNamespace(peak_bytes=peak, budget_bytes=int(budget_gib * GIB), fits=peak <= budget_gib * GIB)

    monkeypatch.setattr(memory_estimate, "estimate", fake_estimate)
    gpu = CATALOG.get("rtx4090")
    spec, resolved, model = search.build_spec("HuggingFaceTB/SmolLM2-135M", gpu, method, 2048, 16, gpus=4)
    proposal = search.propose(spec, resolved, model, gpu, CATALOG, max_traces=30)

    order = search.cells(spec, model, gpu)
    every = [Plan(q, c, p, ch, mb, s) for (q, c, s) in order for (p, ch) in search.saver_sets(spec, q, s)
             for mb in search.micro_batches(16, 2048, gpus=4)]
    fitting = [p for p in every
               if _synthetic_sharded_memory(search.candidate_state(spec, p, CATALOG).recipe) <= budget_gib]
    best = min(fitting, key=lambda p: (order.index((p.quantized, p.checkpointing, p.strategy)), -p.micro_batch,
                                       search.saver_sets(spec, p.quantized, p.strategy).index(
                                           (p.paged_optimizer, p.chunked_loss))), default=None)
    assert best is None or best.strategy is not None  # every candidate runs on the 4 GPUs
    assert proposal.chosen == best
    assert len(proposal.tried) < len(every)
    if best is not None:
        assert f"strategy: {best.strategy}" in proposal.text and "world_size: 4" in proposal.text


def test_a_model_whose_step_fits_one_gpu_gets_ddp_over_2_gpus(tmp_path, capsys):
    code, out = _init(tmp_path, "HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4060", "--seq", "128", "--batch", "2",
                      "--gpus", "2")
    printed = capsys.readouterr().out
    assert code == 0, printed
    text = out.read_text()
    assert "on 2 x NVIDIA GeForce RTX 4060 (rtx4060) with DDP" in text
    assert "  strategy: ddp" in text and "  world_size: 2" in text and "fsdp:" not in text
    assert "# Strategy: DDP over 2: the whole model's step fits one GPU" in text
    assert "per_device_train_batch_size: 1" in text and "1 x 1 x 2 GPUs = 2 sequences" in text
    assert "(rank 0 of 2)" in printed
    _assert_passes_every_check(out, "rtx4060")


@pytest.mark.parametrize("gpus, message", [
    ("0", "argument --gpus: 0: give 1 to 1024 GPUs"), ("1025", "argument --gpus: 1025: give 1 to 1024 GPUs"),
    ("two", "argument --gpus: 'two' is not a whole number"),
])
def test_gpus_outside_1_to_1024_is_a_usage_error(tmp_path, capsys, gpus, message):
    with pytest.raises(SystemExit) as exited:
        _init(tmp_path, "HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4060", "--gpus", gpus)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_batch_the_gpus_cannot_share_equally_exits_2_naming_the_batches_that_work(tmp_path, capsys):
    code, out = _init(tmp_path, "HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4060", "--gpus", "3", "--batch", "16")
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "--batch 16 is not a multiple of --gpus 3" in err and "give --batch 18 or 15" in err


def test_the_default_batch_is_16_rounded_up_to_a_multiple_of_the_gpus():
    gpu = CATALOG.get("rtx4060")
    assert [search.build_spec("HuggingFaceTB/SmolLM2-135M", gpu, "lora", 128, None, gpus=n)[0].batch
            for n in (1, 3, 8, 32)] == [16, 18, 16, 32]


def test_llama_70b_lora_on_8_a100s_is_sharded_with_fsdp2_and_the_written_recipe_fits(tmp_path, capsys):
    """Two sharded traces of the 70B model (~20 s each): LoRA without checkpointing fits at 512 tokens."""
    from recipe_checks.memory.estimate import estimate
    from recipe_checks.models.resolve import resolve_model_config

    code, out = _init(tmp_path, "meta-llama/Llama-3.1-70B", "--gpu", "a100-80gb", "--gpus", "8", "--seq", "512",
                      "--batch", "8", "--max-traces", "2")
    printed = capsys.readouterr().out
    assert code == 0, printed
    text = out.read_text()
    assert "DDP without QLoRA is not traced: the bfloat16 weights (131.4 GiB)" in text  # no 70B trace for DDP
    assert "# Strategy: the bfloat16 weights (131.4 GiB) fit no single a100-80gb (76.00 GiB budget):" in text
    assert "# FSDP2 over 8 keeps 16.4 GiB of the weights per rank" in text
    assert "  strategy: fsdp" in text and "  world_size: 8" in text and "reshard_after_forward: true" in text
    assert "load_in_4bit" not in text  # sharded LoRA ranks above QLoRA on one GPU
    state, _ = check_recipe(out, Options(gpus=("a100-80gb",)), CATALOG)
    result = estimate(state.recipe, resolve_model_config("meta-llama/Llama-3.1-70B"), CATALOG.get("a100-80gb"),
                      with_fixes=False)  # the trace init took, cached
    assert result.fits and result.world_size == 8 and result.per_rank()["strategy"] == "fsdp"
    assert result.breakdown["weights"] == pytest.approx(131.4 * GIB / 8, rel=0.01)  # rank 0's shard: 16.43 GiB
    assert 0 < result.breakdown["unsharded_weights"] < result.breakdown["weights"]  # the all-gathered block
    _assert_passes_every_check(out, "a100-80gb")
