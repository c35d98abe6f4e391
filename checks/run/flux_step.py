"""cpu-step for a FLUX recipe: one real optimizer step of the tiny-random FluxTransformer2DModel, built as
diffusers' FLUX LoRA scripts build it (recipe_checks.memory.diffusion), judged by the same cpu-step rules.

The fixture is loaded with `from_pretrained` from the huggingface_hub cache; 4-bit weights are quantized
with bitsandbytes on the CPU after loading (diffusers' quantizer refuses to load without a GPU). The
image and text are scaled down with the batch: the step's sizes are in the report's notes.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from recipe_checks.library_warnings import quiet
from recipe_checks.run.setup import Scale, SetupRefused, trusted
from recipe_checks.run.step import (
    _ADAPTER_PARTS,
    StepReport,
    _note_gradients,
    _same_bits,
    _tolerance,
    judge_update,
    module_of,
)

MAX_SIDE = 128  # pixels: 8 x 5 packed tokens for 768 x 512, enough to run every op of the step
MAX_TEXT_TOKENS = 16


def small_inputs(inputs: dict) -> dict:
    """The step's image and text scaled down, the image keeping its aspect in multiples of 16 pixels."""
    factor = min(1.0, MAX_SIDE / max(inputs["height"], inputs["width"]))
    height, width = (max(16, round(side * factor / 16) * 16) for side in (inputs["height"], inputs["width"]))
    return {**inputs, "height": height, "width": width, "text_tokens": min(inputs["text_tokens"], MAX_TEXT_TOKENS)}


@trusted("the FLUX step")
def run_flux_step(recipe, resolved, fixture, *, seed: int = 0) -> StepReport:
    """One optimizer step at the first LR past warmup (as many micro-batches as the accumulation), then one
    more backward pass, on the fixture; what it shows, for the cpu-step rules."""
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import get_scheduler

    from recipe_checks.memory.diffusion import build_diffusion_step_model, flow_matching_loss
    from recipe_checks.memory.optimizer import build_optimizer
    from recipe_checks.memory.settings import freeze, settings_from_recipe, thaw

    scale = Scale.small(recipe)
    full = settings_from_recipe(recipe, resolved.config)
    inputs = small_inputs(thaw(full.diffusion))
    settings = dataclasses.replace(full, micro_batch=scale.micro_batch, gradient_accumulation=scale.gradient_accumulation,
                                   diffusion=freeze(inputs))
    report = StepReport(method=recipe.method_label, checkpointing_asked=settings.gradient_checkpointing,
                        weights_dtype=settings.weights_dtype)
    changed = [f"{name} {mine} (recipe: {theirs})" for name, mine, theirs in (
        ("per_device_train_batch_size", settings.micro_batch, full.micro_batch),
        ("gradient_accumulation_steps", settings.gradient_accumulation, full.gradient_accumulation),
        ("image", f"{inputs['height']}x{inputs['width']}", f"{thaw(full.diffusion)['height']}x{thaw(full.diffusion)['width']}"),
        ("max_sequence_length", inputs["text_tokens"], thaw(full.diffusion)["text_tokens"])) if mine != theirs]
    if changed:
        report.notes.append("scaled down: " + ", ".join(changed))
    with quiet():
        base = FluxTransformer2DModel.from_pretrained(str(fixture.path), torch_dtype=getattr(torch, settings.weights_dtype),
                                                      local_files_only=True)
    model = build_diffusion_step_model(resolved, settings, real=True, base=base).model
    tracker = SimpleNamespace(segment=None, region="")  # the loss tells a memory tracker where it is; none here
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    report.trainable = sum(p.numel() for _, p in trainable)
    if recipe.lora is not None:
        report.not_frozen = sorted({module_of(n) for n, _ in trainable if not _ADAPTER_PARTS.search(n)})
    frozen = {n: p.detach().clone() for n, p in named if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable}
    with quiet():
        optimizer = build_optimizer(settings, [p for _, p in trainable])
    t = recipe.training
    steps = t.max_steps if t.max_steps > 0 else 1000
    warmup = int(t.warmup_steps if t.warmup_steps >= 1 else t.warmup_steps * steps)
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    for _ in range(warmup):
        scheduler.step()
    report.step_index, report.learning_rate = warmup, float(scheduler.get_last_lr()[0])
    if recipe.lora is not None:
        _check_identity(model, settings, tracker, seed, report)

    counts = {"forward": 0, "backward": 0, "probe": 0, "phase": "forward"}
    inner = next(iter(model.transformer_blocks[0].children()))  # a child: diffusers checkpoints the block's call
    hook = inner.register_forward_pre_hook(lambda *_: counts.__setitem__(counts["phase"], counts[counts["phase"]] + 1))
    got_gradient: set[str] = set()
    autocast = torch.autocast("cpu", dtype=getattr(torch, settings.precision), enabled=settings.precision != "float32")
    model.train()
    try:
        torch.manual_seed(seed)
        with quiet():
            optimizer.zero_grad(set_to_none=True)
            for _ in range(settings.gradient_accumulation):
                with autocast:
                    loss, _ = flow_matching_loss(model, settings, tracker)
                report.losses.append(float(loss.detach().float().item()))
                counts["phase"] = "backward"
                (loss / settings.gradient_accumulation).backward()
                counts["phase"] = "forward"
            _note_gradients(trainable, got_gradient, report)
            if settings.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            report.block_forwards, report.block_recomputes = counts["forward"], counts["backward"]
            with autocast:  # one more backward: LoRA's A gets its first gradient once B is no longer zero
                probe, _ = flow_matching_loss(model, settings, tracker)
            counts["phase"] = "probe"
            probe.backward()
            _note_gradients(trainable, got_gradient, None)
            optimizer.zero_grad(set_to_none=True)
    finally:
        hook.remove()

    return judge_update(report, named, trainable, frozen, before, got_gradient, same=_same_value)


def _same_value(now, before) -> bool:
    """The same bytes, or the same values in another float dtype: bitsandbytes' Linear4bit casts its bias to the
    input's dtype in forward (the fp32 that prepare_model_for_kbit_training made of a bf16 bias goes back to bf16)."""
    if now.dtype != before.dtype and now.dtype.is_floating_point and before.dtype.is_floating_point:
        return _same_bits(now.to(before.dtype), before) and _same_bits(before.to(now.dtype), now)
    return _same_bits(now, before)


def _check_identity(model, settings, tracker, seed: int, report: StepReport) -> None:
    """Before any update, the adapted transformer predicts what the base does (diffusers' disable_adapters)."""
    import torch

    from recipe_checks.memory.diffusion import flow_matching_loss

    autocast = torch.autocast("cpu", dtype=getattr(torch, settings.precision), enabled=settings.precision != "float32")
    outputs = []
    # train mode, as the step runs: in eval mode bitsandbytes repacks 4-bit weights for its CPU kernel on the first
    # forward (a CPU-only layout change that reads as a changed base); the adapters' dropout cannot move a zero B
    model.train()
    captured = []
    hook = model.register_forward_hook(lambda _m, _a, out: captured.append(out[0].detach().float()))
    try:
        for enabled in (True, False):
            (model.enable_adapters if enabled else model.disable_adapters)()
            torch.manual_seed(seed)
            with torch.no_grad(), autocast, quiet():
                flow_matching_loss(model, settings, tracker)
            outputs.append(captured.pop())
    finally:
        hook.remove()
        model.enable_adapters()
    report.identity_max_diff = float((outputs[0] - outputs[1]).abs().max().item())
    report.identity_tolerance = _tolerance(outputs[1], settings.precision)


def run_flux_cpu_step(state):
    """cpu-step's outcome for a FLUX recipe (recipe_checks.run.cpu_step.StepOutcome), the step run once per recipe."""
    import time

    from recipe_checks.fixtures.cache import FixtureCacheError, ensure_fixture
    from recipe_checks.limits import shorten
    from recipe_checks.run.cpu_step import StepOutcome, fixture_failure

    recipe, resolved = state.recipe, state.resolved_model()
    outcome = StepOutcome()
    started = time.perf_counter()
    try:
        outcome.fixture = ensure_fixture(resolved, cache_dir=state.options.fixture_cache, task_type="DIFFUSION")
    except FixtureCacheError as exc:  # this machine's cache, not the model: an error, not a skip
        outcome.fixture_error = fixture_failure(exc)
        return outcome
    except Exception as exc:  # noqa: BLE001  no tiny model for this transformer: nothing to run
        outcome.cannot_run = (f"no tiny-random model of '{shorten(recipe.model.name)}' could be built: "
                              f"{shorten(str(exc), 200)}; build it with `recipe-checks fixtures build {state.path}`")
        return outcome
    outcome.seconds["fixture"] = time.perf_counter() - started
    try:
        outcome.report = run_flux_step(recipe, resolved, outcome.fixture)
    except SetupRefused as exc:  # a library warned that the step's result may be silently incorrect
        outcome.refused = exc
    except Exception as exc:  # noqa: BLE001  whatever diffusers, peft or bitsandbytes raise on this recipe is a finding
        outcome.refused = SetupRefused("the FLUX step", exc, ())
    outcome.seconds["step"] = time.perf_counter() - started - outcome.seconds["fixture"]
    return outcome
