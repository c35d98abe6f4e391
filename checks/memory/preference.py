"""A DPO step as TRL's DPOTrainer (trl 1.16) runs it, for the memory trace: chosen and rejected rows in one
forward through TRL's own fused LM head, the reference log-probabilities under no_grad, the DPO loss.

What `DPOTrainer._compute_loss` does, step by step (trl/trainer/dpo_trainer.py):
- the collator stacks the chosen rows over the rejected ones: 2 x micro-batch rows, padded to the longest
  (at most `max_length`: the trace takes every row at max_length, the worst batch);
- the policy forward runs the backbone, then `add_fused_lm_head`'s chunked log-softmax over the LM head:
  tiles of [4096 tokens, 32768 vocabulary entries] in the autocast dtype, never the full logits; per-token
  log-probs, entropy, mean logit and top-1 flag in fp32 ([rows, max_length - 1] each);
- the reference forward, under no_grad with activation checkpointing switched off: with peft the same
  model with its adapters disabled (`use_adapter(model, None)`), else a second frozen model loaded like
  the first; skipped when `precompute_ref_log_probs` read them from the dataset before training;
- the loss from the summed log-probs (B numbers per side).
On CUDA TRL folds each tile in a Triton kernel that allocates nothing; the trace runs TRL's torch fold of
the same tile without accounting its temporaries (`tracker.untracked`), so it stands for the CUDA step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile

from recipe_checks import compat
from recipe_checks.memory.settings import StepSettings, thaw

# The reference strategies: what DPOTrainer holds to compute the reference log-probabilities.
ADAPTERS_DISABLED = "adapters_disabled"  # peft: the trained model, adapters switched off
REFERENCE_MODEL = "model"  # full fine-tune: a second, frozen copy of the model
PRECOMPUTED = "precomputed"  # precompute_ref_log_probs: read from the dataset, no reference forward

# What DPOTrainer asks its fused LM head for (its metrics), plus log_sum_sq_probs with use_weighting.
_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def dpo_arguments(recipe):
    """trl.DPOConfig as the recipe's training script builds it: the training and dpo sections together.
    Raises MissingExtra without TRL, and what DPOConfig (or TrainingArguments) raises for the recipe."""
    from recipe_checks.library_warnings import quiet
    from recipe_checks.recipe.library import dpo_config
    from recipe_checks.recipe.validate import library_kwargs
    from recipe_checks.run.setup import Scale, training_kwargs

    kwargs = {k: v for k, v in training_kwargs(recipe, Scale.full(recipe)).items() if k != "tf32"}
    with quiet():
        return dpo_config(kwargs, library_kwargs(recipe.dpo), output_dir=tempfile.gettempdir(), report_to=[],
                          use_cpu=True, save_strategy="no")


def reference_strategy(has_adapters: bool, precompute: bool) -> str:
    """How DPOTrainer gets the reference log-probabilities (its __init__'s ref_model branch)."""
    if precompute:
        return PRECOMPUTED
    return ADAPTERS_DISABLED if has_adapters else REFERENCE_MODEL


def dpo_step_settings(recipe, settings: StepSettings) -> StepSettings:
    """The step settings of a DPO recipe, with DPOConfig's defaults (gradient checkpointing on, bf16 when
    fp16 is not set, max_length 1024) where the recipe leaves a key out."""
    notes = list(settings.notes)
    dpo = recipe.dpo
    try:
        args = dpo_arguments(recipe)
    except Exception as exc:  # noqa: BLE001  RC117 reports what DPOConfig refuses; traced as the schema reads it
        notes.append(f"DPOConfig refuses the recipe ({type(exc).__name__}): traced with the sections as written")
        precision, checkpointing, max_length = settings.precision, settings.gradient_checkpointing, dpo.max_length
        precompute, weighting, dropout = dpo.precompute_ref_log_probs, False, True
        loss_types = dpo.loss_types
    else:
        precision = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
        checkpointing = compat.activation_checkpointing(args)[0]
        max_length, precompute = args.max_length, bool(args.precompute_ref_log_probs)
        weighting, dropout, loss_types = bool(args.use_weighting), bool(args.disable_dropout), list(args.loss_type)
        if precision != settings.precision:
            notes.append(f"trains in {precision}: DPOConfig's default when the recipe sets neither bf16 nor fp16")
        if checkpointing and not settings.gradient_checkpointing:
            notes.append("activation checkpointing on: DPOConfig's default when the recipe does not set it")
    seq_len = settings.seq_len
    if max_length is not None:
        seq_len = max_length
    else:
        notes.append(f"dpo.max_length: null truncates nothing: traced at training.max_seq_length {seq_len}")
    if settings.chunked_loss:
        notes.append("use_liger_kernel: DPOTrainer keeps Liger's fused linear cross-entropy off (its own fused LM head "
                     "computes the log-probs); traced with TRL's head")
    strategy = reference_strategy(bool(settings.lora), precompute)
    outputs = _OUTPUTS + (("log_sum_sq_probs",) if weighting else ())
    preference = (("disable_dropout", dropout), ("loss_type", tuple(loss_types)), ("outputs", outputs),
                  ("reference", strategy), ("trainer", "dpo"))
    return dataclasses.replace(settings, precision=precision, gradient_checkpointing=checkpointing,
                               seq_len=seq_len, preference=preference, chunked_loss=False, notes=tuple(notes))


def preference_step(step, resolved, settings: StepSettings, *, real: bool, device: str):
    """The StepModel of a DPO step: TRL's fused LM head on the model (and the reference model it needs,
    built and counted), and the DPO forward and loss as the step's `loss`."""
    from recipe_checks import limits
    from recipe_checks.memory.errors import TraceError
    from recipe_checks.recipe.library import require_trl

    require_trl()
    if 2 * settings.micro_batch * settings.seq_len > limits.MAX_TRACE_TOKENS:  # RC119 says so in the recipe
        raise TraceError(f"a DPO step of 2 x {settings.micro_batch} rows of {settings.seq_len:,} tokens is more than "
                         f"the {limits.MAX_TRACE_TOKENS:,} tokens a training step is checked for")
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    from recipe_checks.library_warnings import quiet

    pref = dict(settings.preference)
    model = step.model
    reference = reference_blocks = None
    if step.quantized:
        _adapters_in_bf16(model, step.fake)
    with quiet():
        if pref["disable_dropout"]:
            disable_dropout_in_model(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        add_fused_lm_head(base, outputs=pref["outputs"])
        if pref["reference"] == REFERENCE_MODEL:
            reference, reference_blocks = _reference_model(step, resolved, settings, real=real, device=device)
            add_fused_lm_head(reference)
    step.loss = DpoLoss(reference, reference_blocks)
    step.notes.append(f"policy forward: the chosen and rejected rows concatenated, {2 * settings.micro_batch} rows "
                      f"({settings.micro_batch} pair(s)) of {settings.seq_len} tokens in one forward")
    if reference is not None:
        step.notes.append("the reference model, a second frozen copy of the model as DPOTrainer loads it for a "
                          "full fine-tune, is held beside it (reference_weights)")
    elif pref["reference"] == ADAPTERS_DISABLED:
        step.notes.append("reference log-probs: the same model with its adapters disabled, under no_grad (reference)")
    else:
        step.notes.append("reference log-probs precomputed (precompute_ref_log_probs): no reference forward")
    step.notes.append("TRL's fused LM head scores every position here; on CUDA it scores only completion tokens "
                      "(prompt tokens take fewer bytes: an upper bound)")
    return step


def _adapters_in_bf16(model, fake) -> None:
    """DPOTrainer on a quantized model (QLoRA): every trainable parameter but DoRA's magnitude vector in bf16,
    as the QLoRA paper trains them (peft would keep them in fp32); no k-bit preparation of the rest."""
    import torch

    with fake if fake is not None else contextlib.nullcontext():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_magnitude_vector" not in name:
                param.data = param.data.to(torch.bfloat16)


def _reference_model(step, resolved, settings: StepSettings, *, real: bool, device: str):
    """DPOTrainer's reference for a full fine-tune: the model loaded again from its checkpoint, in the same
    dtype and attention, frozen, in eval mode; as many decoder blocks as the traced model
    keeps. Returns it and its decoder blocks."""
    import torch
    import transformers

    from recipe_checks.memory.blocks import TRACED_BLOCKS, decoder_blocks, keep_blocks
    from recipe_checks.memory.materialize import materialize_fake
    from recipe_checks.models.skeleton import build_config

    with torch.device(device if real else "meta"):
        reference = transformers.AutoModelForCausalLM.from_config(
            build_config(resolved), dtype=getattr(torch, settings.weights_dtype),
            attn_implementation=settings.attn_implementation)
    blocks = decoder_blocks(reference)  # found before any is dropped: the search matches the config's count
    if step.copies:
        keep_blocks(blocks, TRACED_BLOCKS)
    if real:  # the same checkpoint: the policy's weights
        reference.load_state_dict(step.model.state_dict(), strict=False)
    reference.requires_grad_(False)
    reference.eval()
    if not real:
        materialize_fake(reference, step.fake)
    return reference, blocks


class DpoLoss:
    """The DPO step's forward and loss (StepModel.loss): (model, settings, tracker) -> (loss, batch); the
    batch is what TRL's collator gives training_step, held through the backward: input ids, completion
    mask and, when precomputed, the reference log-probabilities."""

    def __init__(self, reference=None, reference_blocks=None) -> None:
        self.reference = reference
        self.reference_blocks = reference_blocks

    def __call__(self, model, settings: StepSettings, tracker):
        import torch
        import torch.nn.functional as F
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        from recipe_checks.memory.blocks import blocks_of_tensors, segment_hooks

        pref = dict(settings.preference)
        beta = 0.1  # the loss's value is not traced, its shapes are: B numbers per side whatever beta is
        rows = 2 * settings.micro_batch  # chosen rows, then rejected rows
        if self.reference is not None:
            of_block = blocks_of_tensors(self.reference_blocks)
            tracker.held_from_start([(t, of_block.get(id(t))) for t in _tensors(self.reference)], "reference_weights")
        input_ids = torch.zeros((rows, settings.seq_len), dtype=torch.long)
        completion_mask = torch.ones((rows, settings.seq_len), dtype=torch.long)
        labels = input_ids.masked_fill(completion_mask == 0, -100)
        seq_len = settings.seq_len - 1
        with _fused_head_regions(tracker):
            outputs = model(input_ids=input_ids, labels=labels, use_cache=False, fused_lm_head=True)
            tracker.segment = None
            # the outputs' entropy, mean logits and top-1 flags feed TRL's metrics after the loss: held till then
            logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
            chosen, rejected = logps.chunk(2, dim=0)
            if pref["reference"] == PRECOMPUTED:  # dataset columns, moved to the device with the batch
                ref_chosen = torch.zeros((settings.micro_batch,), dtype=torch.float32)
                ref_rejected = torch.zeros((settings.micro_batch,), dtype=torch.float32)
            else:
                region, tracker.region = tracker.region, "reference"
                hooks = segment_hooks(self.reference_blocks, tracker) if self.reference is not None else []
                try:
                    with torch.no_grad(), disable_gradient_checkpointing(model, thaw(settings.gradient_checkpointing_kwargs) or None):
                        if self.reference is None:
                            with use_adapter(model, adapter_name=None):
                                ref = model(input_ids=input_ids, labels=labels, use_cache=False, fused_lm_head=True)
                        else:
                            ref = self.reference(input_ids=input_ids, labels=labels, use_cache=False, fused_lm_head=True)
                        tracker.segment = None
                        ref_logps = ref.log_probs[:, -seq_len:].sum(dim=1)
                        del ref
                finally:
                    for hook in hooks:
                        hook.remove()
                    tracker.region = region
                ref_chosen, ref_rejected = ref_logps.chunk(2, dim=0)
            # the sigmoid loss; TRL's other loss types combine the same B numbers per side
            logits = (chosen - ref_chosen) - (rejected - ref_rejected)
            loss = -F.logsigmoid(beta * logits).mean()
            del outputs
        held = (input_ids, completion_mask) + ((ref_chosen, ref_rejected) if pref["reference"] == PRECOMPUTED else ())
        return loss, held


def _tensors(module) -> list:
    return [*module.parameters(), *module.buffers()]


@contextlib.contextmanager
def _fused_head_regions(tracker):
    """TRL's fused LM head never calls the head module, whose hooks mark the tracker's logits_loss region
    for a causal LM: mark it around TRL's chunked log-prob function, in the forward and in the backward
    until the hidden states' gradient is out; and run its tile folds as its CUDA kernels do (allocating
    nothing), from the forward to the end of that backward."""
    kernels = compat.trl_chunked_logprob()
    slot = compat.trl_fused_head_function_slot()
    original = slot._ChunkedLogProbFunction
    folds = {name: getattr(kernels, name) for name in ("_forward_tile", "_backward_tile", "_addmm_fp32")}

    def in_registers(fold):
        def run(*args, **kwargs):
            with tracker.untracked():
                return fold(*args, **kwargs)
        run.original = fold
        return run

    def restore_folds() -> None:
        for name in folds:
            current = getattr(kernels, name)
            setattr(kernels, name, getattr(current, "original", current))

    def backward_done(_grad) -> None:
        tracker.region = ""
        restore_folds()

    class Marked:
        @staticmethod
        def apply(hidden, *args):
            region = tracker.region
            if region == "":
                tracker.region = "logits_loss"
            try:
                out = original.apply(hidden, *args)
            finally:
                tracker.region = region
            if hidden.requires_grad and region == "":
                hidden.register_hook(backward_done)
            return out

    restore_folds()  # a step that ended before its backward left them in place
    slot._ChunkedLogProbFunction = Marked
    for name, fold in folds.items():
        setattr(kernels, name, in_registers(getattr(fold, "original", fold)))
    try:
        yield
    except BaseException:
        restore_folds()
        raise
    finally:
        slot._ChunkedLogProbFunction = original


def preference_fixes(settings: StepSettings) -> list[tuple[str, str, StepSettings]]:
    """(name, recipe change, settings) of the fixes that apply to a DPO step beyond the generic ones."""
    pref = dict(settings.preference)
    out = []
    if pref["reference"] == REFERENCE_MODEL:
        precomputed = tuple(sorted({**pref, "reference": PRECOMPUTED}.items()))
        out.append(("precomputed reference log-probs (no second model in memory)",
                    "dpo.precompute_ref_log_probs: true",
                    dataclasses.replace(settings, preference=precomputed)))
    if settings.seq_len >= 256:
        out.append(("shorter sequences", f"dpo.max_length: {settings.seq_len // 2}",
                    dataclasses.replace(settings, seq_len=settings.seq_len // 2)))
    return out


def reference_pass_note(peak_bytes: int, step_peak_bytes: int) -> str:
    """The estimate's line for the reference forward: its own peak, beside the step's."""
    from recipe_checks.gpus import GIB

    return (f"reference forward (no_grad, chosen and rejected rows): peaks at {peak_bytes / GIB:.2f} GiB, "
            f"{(step_peak_bytes - peak_bytes) / GIB:.2f} GiB below the step's peak")


def dpo_ceiling(recipe, model, gpu):
    """The tokens/s ceiling of a DPO step (recipe_checks.throughput), counting chosen and rejected tokens as TRL's
    num_tokens does: the policy's forward and backward (and recompute) at dpo.max_length, plus the reference's
    forward (no_grad, checkpointing off) unless its log-probs are precomputed."""
    from recipe_checks.recipe.schema import Method
    from recipe_checks.throughput import Throughput, attention_flops_per_token, ceiling

    dpo = recipe.dpo
    try:
        args = dpo_arguments(recipe)
        checkpointing, length = compat.activation_checkpointing(args)[0], args.max_length
        precision = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
        precompute = bool(args.precompute_ref_log_probs)
    except Exception:  # noqa: BLE001  RC117 reports what DPOConfig refuses: the sections as written
        checkpointing, length = recipe.training.gradient_checkpointing, dpo.max_length
        precision, precompute = recipe.training_dtype, dpo.precompute_ref_log_probs
    seq_len = length if length is not None else recipe.training.max_seq_length
    policy = ceiling(model, seq_len, trains_weights=recipe.method is Method.FULL, checkpointing=checkpointing,
                     gpu=gpu, precision=precision)
    reference = 0.0 if precompute else 2.0 * policy.matmul_params + attention_flops_per_token(model.config, seq_len)
    flops = policy.flops_per_token + reference
    peak = policy.peak_tflops
    return Throughput(flops, policy.matmul_params, peak * 1e12 / flops if peak else None, peak)
