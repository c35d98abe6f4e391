"""One real optimizer step of a recipe, as training runs it, and what it shows: whether the adapters start
as the identity, the loss and the weights stay finite, every trainable parameter gets a gradient, the
base stays frozen, the adapters change, and activation checkpointing really re-runs the blocks.

`run_real_step` observes; the cpu-step rules (RC701-RC707) judge the `StepReport` it returns.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from recipe_checks.library_warnings import quiet
from recipe_checks.run.setup import TrainingSetup, autocast, trusted

_ADAPTER_PARTS = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|"
                            r"modules_to_save)(\.[^.]+)?(\.weight|\.bias)?$")
_PEFT_PREFIX = "base_model.model."


@dataclass
class StepReport:
    """What one real step showed; module names as the model names them (peft's prefix removed)."""

    method: str  # the recipe's training method label
    identity_max_diff: float | None = None  # largest |adapted - base| of the logits before any update
    identity_tolerance: float = 0.0
    not_identity: list[str] = field(default_factory=list)  # adapted modules whose output differs from the base's
    losses: list[float] = field(default_factory=list)  # per micro-batch
    learning_rate: float = 0.0  # the LR the schedule gave the step
    step_index: int = 0  # the schedule step the update ran at (the first one past warmup)
    non_finite_gradients: list[str] = field(default_factory=list)
    non_finite_parameters: list[str] = field(default_factory=list)
    no_gradient: list[str] = field(default_factory=list)  # trainable modules that got no gradient
    not_frozen: list[str] = field(default_factory=list)  # base weights the optimizer trains (adapter recipes)
    base_changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # trained modules the update did not change
    checkpointing_asked: bool = False
    block_forwards: int = 0  # forward calls of the first decoder block in the step's micro-batches
    block_recomputes: int = 0  # ... and during their backward passes (checkpointing re-runs it there)
    trainable: int = 0  # trainable parameters
    trained_modules: int = 0  # modules holding them
    weights_dtype: str = "float32"
    notes: list[str] = field(default_factory=list)

    @property
    def finite_loss(self) -> bool:
        import math

        return all(math.isfinite(x) for x in self.losses)


def module_of(parameter_name: str) -> str:
    """The module a parameter belongs to, as the base model names it: peft's wrapper prefix and adapter
    parts removed ('base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight' ->
    'model.layers.0.self_attn.q_proj')."""
    name = parameter_name.removeprefix(_PEFT_PREFIX)
    stripped = _ADAPTER_PARTS.sub("", name)
    if stripped != name:
        return stripped
    return name.rsplit(".", 1)[0] if "." in name else name


def summarize_modules(names: list[str], limit: int = 6) -> str:
    """Module names grouped by their block index: 'model.layers.{0,1}.self_attn.q_proj, lm_head'."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = re.search(r"\.(\d+)\.", name)
        key = name[:match.start(1)] + "{}" + name[match.end(1):] if match else name
        groups.setdefault(key, [])
        if match:
            groups[key].append(match.group(1))
    shown = []
    for key, indexes in groups.items():
        ordered = sorted(set(indexes), key=int)
        shown.append(key.replace("{}", "{" + ",".join(ordered) + "}" if len(ordered) > 1 else ordered[0])
                     if indexes else key)
    text = ", ".join(shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def token_batches(vocab_size: int, scale, count: int, seed: int):
    """Fixed token batches: the same data every run, so a step is reproducible."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (scale.micro_batch, scale.seq_len), generator=generator) for _ in range(count)]


def _adapter_layers(model) -> dict[str, Any]:
    """peft's tuner layers by the base model's module name."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft not installed: a full fine-tune has none anyway
        return {}
    return {name.removeprefix(_PEFT_PREFIX): m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def _tolerance(logits, precision: str) -> float:
    """How far two computations of the same function may differ: DoRA recomputes the weight as
    magnitude x direction, which rounds; LoRA's zero update does not (its difference is exactly 0)."""
    import torch

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision, logits.dtype)
    eps = torch.finfo(dtype).eps
    return float(64 * eps * max(1.0, logits.abs().max().item()))


def _check_identity(setup: TrainingSetup, batch, report: StepReport) -> None:
    """Before any update, the adapted model's output equals the base model's (peft's disable_adapter)."""
    import torch

    model = setup.model
    layers = _adapter_layers(model)
    if not layers:
        return
    model.eval()
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, out) -> None:  # returns None: a forward hook's return value replaces the output
            seen.setdefault(name, (args, out))
        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad(), autocast(setup.precision, batch.device.type):
            adapted = model(input_ids=batch).logits.float()
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad(), autocast(setup.precision, batch.device.type), model.disable_adapter():
        base = model(input_ids=batch).logits.float()
    report.identity_max_diff = float((adapted - base).abs().max().item())
    report.identity_tolerance = _tolerance(base, setup.precision)
    if report.identity_max_diff <= report.identity_tolerance:
        return
    # name the modules: each adapted layer on the input it saw, with and without its adapter
    for name, (args, out) in seen.items():
        layer = layers[name]
        with torch.no_grad(), autocast(setup.precision, batch.device.type):
            layer.enable_adapters(False)
            try:
                plain = layer(*args)
            finally:
                layer.enable_adapters(True)
        if not isinstance(out, torch.Tensor) or not isinstance(plain, torch.Tensor):
            continue
        if (out.float() - plain.float()).abs().max().item() > _tolerance(plain.float(), setup.precision):
            report.not_identity.append(name)


def _count_block_calls(setup: TrainingSetup):
    """A hook counting the first decoder block's forward runs, and those made while the backward pass
    runs (activation checkpointing re-runs the block there); the caller sets counts["phase"]."""
    from recipe_checks.models.blocks import decoder_blocks

    found = decoder_blocks(setup.model.get_base_model() if hasattr(setup.model, "get_base_model") else setup.model,
                           strict=False)
    counts = {"forward": 0, "backward": 0, "probe": 0, "phase": "forward"}
    if found is None:
        return counts, None
    # a child of the block, not the block: transformers checkpoints the block's forward, under its hooks
    inner = next(iter(found[1][0].children()), None)
    if inner is None:
        return counts, None

    def count(*_):
        counts[counts["phase"]] += 1

    return counts, inner.register_forward_pre_hook(count)


@trusted("the step")
def run_real_step(setup: TrainingSetup, recipe, *, vocab_size: int, seed: int = 0, device: str = "cpu",
                  batches: list | None = None, loss_of: Callable[[Any], Any] | None = None) -> StepReport:
    """One optimizer step at the first LR past warmup, as many micro-batches as the accumulation, then
    one more backward pass to see the gradients a zero-initialised LoRA B withholds from A on step 1.
    `batches` and `loss_of`: a trainer's own batches (dicts with input_ids) and loss of one (TRL's
    DPOTrainer.compute_loss), instead of random tokens and the causal LM's loss."""
    import torch

    model, optimizer, scheduler = setup.model, setup.optimizer, setup.scheduler
    report = StepReport(method=recipe.method_label, checkpointing_asked=setup.checkpointing, notes=list(setup.notes),
                        weights_dtype=setup.weights_dtype)
    scale_note = setup.scale.describe(recipe)
    if scale_note:
        report.notes.append(scale_note)
    if batches is None:
        batches = [b.to(device) for b in token_batches(vocab_size, setup.scale, setup.scale.gradient_accumulation + 1, seed)]
    if loss_of is None:
        def loss_of(batch):
            return model(input_ids=batch, labels=batch).loss
    torch.manual_seed(seed)
    _check_identity(setup, batches[0]["input_ids"] if isinstance(batches[0], dict) else batches[0], report)

    named = [(n, p) for n, p in model.named_parameters()]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    report.trainable = sum(p.numel() for _, p in trainable)
    adapters = recipe.lora is not None
    if adapters:
        report.not_frozen = sorted({module_of(n) for n, _ in trainable if not _ADAPTER_PARTS.search(n)})
    frozen = {n: p.detach().clone() for n, p in named if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable}

    # the schedule's first step past warmup (a warmup schedule's first step has lr 0, by design)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": moving the schedule on
        for _ in range(setup.warmup_steps):
            scheduler.step()
    report.step_index = setup.warmup_steps
    report.learning_rate = float(scheduler.get_last_lr()[0])

    counts, hook = _count_block_calls(setup)
    model.train()
    got_gradient: set[str] = set()
    try:
        with quiet():
            optimizer.zero_grad(set_to_none=True)
            for batch in batches[:-1]:
                with autocast(setup.precision, device):
                    loss = loss_of(batch)
                report.losses.append(float(loss.detach().float().item()))
                counts["phase"] = "backward"
                (loss / setup.scale.gradient_accumulation).backward()
                counts["phase"] = "forward"
            _note_gradients(trainable, got_gradient, report)
            if setup.args.max_grad_norm and setup.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], setup.args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            report.block_forwards, report.block_recomputes = counts["forward"], counts["backward"]
            # one more backward (no update): LoRA's A gets its first gradient once B is no longer zero
            with autocast(setup.precision, device):
                probe = loss_of(batches[-1])
            counts["phase"] = "probe"
            probe.backward()
            _note_gradients(trainable, got_gradient, None)  # non-finite here follows from the update: RC703 names that
            optimizer.zero_grad(set_to_none=True)
    finally:
        if hook is not None:
            hook.remove()

    return judge_update(report, named, trainable, frozen, before, got_gradient)


def judge_update(report: StepReport, named, trainable, frozen: dict, before: dict, got_gradient: set[str],
                 same: Callable[[Any, Any], bool] | None = None) -> StepReport:
    """Fill in what the step did to the weights: non-finite ones, trained modules without a gradient, frozen
    ones that changed (`same` compares a weight with its copy from before the step; bytes by default),
    trained ones that did not."""
    import torch

    same = same or _same_bits
    by_module: dict[str, list[str]] = {}
    for n, _ in trainable:
        by_module.setdefault(module_of(n), []).append(n)
    report.trained_modules = len(by_module)
    report.non_finite_parameters = sorted({module_of(n) for n, p in named if not _packed(p)
                                           and not torch.isfinite(p.detach().float()).all()})
    # every trained tensor, each matrix of an adapter pair included (A's first gradient comes in the probe,
    # once the update moved B); an update that moved nothing (lr 0) or broke the weights shows no such
    # second gradient: RC706 or RC703 say why, and the pair is judged on the step alone
    moved = report.learning_rate > 0 and not report.non_finite_parameters and report.finite_loss
    judge = all if moved else any
    report.no_gradient = sorted(m for m, names in by_module.items() if not judge(n in got_gradient for n in names))
    report.base_changed = sorted({module_of(n) for n, p in named if n in frozen and not same(p.detach(), frozen[n])})
    # a module changed when any of its trained tensors did (LoRA's A may not move on step 1: B was zero)
    changed = {module_of(n) for n, p in trainable if not _same_bits(p.detach(), before[n])}
    report.unchanged = sorted(m for m in by_module if m not in changed and m not in report.no_gradient)
    return report


def _packed(param) -> bool:
    """bitsandbytes' 4-bit weights: packed 4-bit codes in whatever dtype quant_storage names (uint8, or
    bfloat16 as Axolotl and FSDP-QLoRA set it), not numbers: read as floats their bytes may be NaN."""
    return getattr(param, "quant_state", None) is not None


def _same_bits(a, b) -> bool:
    """Whether two tensors hold the same bytes: a NaN equals itself, and packed weights compare as bytes."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _note_gradients(trainable, got_gradient: set[str], report: StepReport | None) -> None:
    """Which parameters got a non-zero gradient; non-finite gradients go to `report` when given."""
    import torch

    for n, p in trainable:
        if p.grad is None:
            continue
        grad = p.grad.detach()
        if not torch.isfinite(grad).all():
            if report is not None and module_of(n) not in report.non_finite_gradients:
                report.non_finite_gradients.append(module_of(n))
        elif grad.count_nonzero().item():
            got_gradient.add(n)
