"""Build what a real run of a recipe trains, through the libraries' own code paths: the model loaded with
`from_pretrained` and the recipe's BitsAndBytesConfig, TRL-style k-bit preparation, peft's adapters,
checkpointing as the Trainer enables it, and the optimizer and LR scheduler the Trainer builds.

Only sizes change (sequence length, micro-batch, how many steps the schedule spans): `Scale` says which.
A setting a library refuses raises `SetupRefused`, carrying the library's message and the recipe key.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from recipe_checks import compat
from recipe_checks.library_warnings import SilentlyIncorrect, failing_on_silently_incorrect, quiet

# The schedule's length when the recipe sets no max_steps: a fractional warmup_steps is read against it.
DEFAULT_SCHEDULE_STEPS = 1000
# Training keys that decide how the trainer runs on this machine, not what it trains: set here.
_MACHINE_KEYS = frozenset({"output_dir", "report_to", "use_cpu", "logging_dir", "save_strategy", "hub_token",
                           "push_to_hub", "dataloader_num_workers", "dataloader_pin_memory"})


@dataclass(frozen=True)
class Scale:
    """The sizes a real step runs at: the recipe's, scaled down for a tiny model on a CPU."""

    seq_len: int
    micro_batch: int
    gradient_accumulation: int

    @classmethod
    def small(cls, recipe, *, seq_len: int = 32, micro_batch: int = 2, max_accumulation: int = 64) -> Scale:
        t = recipe.training
        return cls(min(seq_len, t.max_seq_length), min(micro_batch, t.per_device_train_batch_size),
                   min(max_accumulation, t.gradient_accumulation_steps))

    @classmethod
    def full(cls, recipe) -> Scale:
        t = recipe.training
        return cls(t.max_seq_length, t.per_device_train_batch_size, t.gradient_accumulation_steps)

    def describe(self, recipe) -> str | None:
        t = recipe.training
        changed = [f"{name} {mine} (recipe: {theirs})" for name, mine, theirs in (
            ("max_seq_length", self.seq_len, t.max_seq_length),
            ("per_device_train_batch_size", self.micro_batch, t.per_device_train_batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation, t.gradient_accumulation_steps),
        ) if mine != theirs]
        return "scaled down: " + ", ".join(changed) if changed else None


class SetupRefused(Exception):
    """A library refused a recipe setting while the run was being built."""

    def __init__(self, stage: str, exc: BaseException, key_path: tuple = ()) -> None:
        super().__init__(f"{stage}: {type(exc).__name__}: {exc}")
        self.stage = stage  # what was being built: "TrainingArguments", "from_pretrained", ...
        self.library_error = exc
        self.key_path = key_path  # the recipe key that makes the library refuse, when found


@contextlib.contextmanager
def trusted(stage: str):
    """Run a real step or run whose result a verdict rests on: when a library warns in it that a result may be
    silently incorrect, it is refused (SetupRefused carrying SilentlyIncorrect), never judged."""
    try:
        with failing_on_silently_incorrect():
            yield
    except SilentlyIncorrect as exc:
        raise SetupRefused(stage, exc, ()) from None


@dataclass
class TrainingSetup:
    model: Any  # what the optimizer trains: the PeftModel, or the model itself for a full fine-tune
    args: Any  # transformers.TrainingArguments
    trainer: Any  # the transformers.Trainer that built the optimizer and scheduler
    optimizer: Any
    scheduler: Any
    schedule_steps: int  # the steps the LR schedule spans
    precision: str  # autocast dtype of the step: bfloat16, float16 or float32
    weights_dtype: str  # the dtype the weights were loaded in
    quantized: bool
    checkpointing: bool  # the trainer enabled activation checkpointing
    scale: Scale
    notes: list[str] = field(default_factory=list)

    @property
    def warmup_steps(self) -> int:
        return self.args.get_warmup_steps(self.schedule_steps)


def vocab_size(config: dict) -> int:
    """The decoder's vocabulary size from a config.json (a multimodal config nests the decoder's)."""
    return int((config.get("text_config") or config)["vocab_size"])


def training_kwargs(recipe, scale: Scale) -> dict[str, Any]:
    """The TrainingArguments kwargs of a recipe at this scale (its own keys, as written)."""
    from recipe_checks.recipe.validate import library_kwargs

    kwargs = library_kwargs(recipe.training)
    kwargs.pop("max_seq_length", None)
    for key in _MACHINE_KEYS:
        kwargs.pop(key, None)
    kwargs["per_device_train_batch_size"] = scale.micro_batch
    kwargs["gradient_accumulation_steps"] = scale.gradient_accumulation
    return kwargs


@functools.cache
def trainer_output_dir() -> str:
    """The output_dir of every trainer a check builds: one directory per process, removed when it exits.
    Nothing is written there (save_strategy "no", report_to none), but TrainingArguments and TRL's configs
    need a directory, and one per step left hundreds of empty ones in the temp dir."""
    path = tempfile.mkdtemp(prefix="recipe-checks-")
    atexit.register(shutil.rmtree, path, True)
    return path


def training_arguments(kwargs: dict[str, Any], *, output_dir: str, on_cpu: bool):
    from transformers import TrainingArguments

    if on_cpu:
        # tf32 is a property of the target GPU (RC401 judges it there); TrainingArguments refuses it on a CPU
        kwargs = {k: v for k, v in kwargs.items() if k != "tf32"}
    with quiet():
        return TrainingArguments(output_dir=output_dir, report_to=[], use_cpu=on_cpu, save_strategy="no", **kwargs)


def blame_key(recipe_kwargs: dict[str, Any], fails: Callable[[dict[str, Any]], bool]) -> str | None:
    """The one key of `recipe_kwargs` that, reset to the library's default, makes `fails` false: the key a
    library's refusal (or a broken update) comes from. None when no single key explains it."""
    for key in recipe_kwargs:
        trial = {k: v for k, v in recipe_kwargs.items() if k != key}
        try:
            if not fails(trial):
                return key
        except Exception:  # noqa: BLE001  another failure with the key removed: not this key alone
            continue
    return None


def _quantization_config(recipe):
    q = recipe.quantization
    if q is None or not (q.load_in_4bit or q.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    from recipe_checks.recipe.validate import library_kwargs

    kwargs = {k: v for k, v in library_kwargs(q).items() if k != "quant_method"}
    return BitsAndBytesConfig(**kwargs)


def _auto_class(recipe):
    import transformers

    from recipe_checks.models.skeleton import _AUTO_CLASS_BY_TASK

    task = recipe.lora.task_type if recipe.lora is not None else "CAUSAL_LM"
    return getattr(transformers, _AUTO_CLASS_BY_TASK.get(task or "CAUSAL_LM", "AutoModelForCausalLM"))


def load_model(recipe, model_path: str, *, weights_dtype: str, device: str = "cpu"):
    """The base model as a real run loads it: `from_pretrained` with the recipe's quantization."""
    import torch

    quantization = _quantization_config(recipe)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, weights_dtype), "local_files_only": True}
    if recipe.model.attn_implementation in ("eager", "sdpa"):
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": device}
    compat.bitsandbytes_without_hub_kernel()
    with quiet(), _no_progress_bars():
        try:
            model = _auto_class(recipe).from_pretrained(model_path, **kwargs)
        except Exception as exc:
            raise SetupRefused("from_pretrained", exc, ("quantization",) if quantization is not None else ("model",)) from None
    if quantization is not None:
        compat.keep_4bit_training_layout(model)
    elif device != "cpu":
        model.to(device)
    return model


@contextlib.contextmanager
def _no_progress_bars():
    """transformers draws a progress bar per load on stderr: a check run loads a model per recipe."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_training(recipe, model_path: str, scale: Scale, *, weights_dtype: str, device: str = "cpu",
                   schedule_steps: int | None = None, kwargs: dict[str, Any] | None = None) -> TrainingSetup:
    """Everything one real optimizer step of the recipe needs, built as the Trainer and TRL build it.
    `kwargs`: TrainingArguments kwargs instead of the recipe's (to find which key a failure comes from)."""
    kwargs = training_kwargs(recipe, scale) if kwargs is None else kwargs
    output_dir = trainer_output_dir()
    on_cpu = device == "cpu"
    try:
        args = training_arguments(kwargs, output_dir=output_dir, on_cpu=on_cpu)
    except Exception as exc:
        key = blame_key(kwargs, lambda kw: _refuses(lambda: training_arguments(kw, output_dir=output_dir, on_cpu=on_cpu)))
        raise SetupRefused("TrainingArguments", exc, ("training", key) if key else ("training",)) from None
    model = load_model(recipe, model_path, weights_dtype=weights_dtype, device=device)
    checkpointing, checkpoint_kwargs = compat.activation_checkpointing(args)
    quantized = _quantization_config(recipe) is not None
    with quiet():
        if recipe.lora is not None:
            from peft import get_peft_model, prepare_model_for_kbit_training

            from recipe_checks.recipe.library import lora_config
            from recipe_checks.recipe.validate import library_kwargs

            if quantized:  # as TRL's SFTTrainer prepares a k-bit model before wrapping it
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=checkpoint_kwargs,
                )
            try:
                model = get_peft_model(model, lora_config(library_kwargs(recipe.lora)))
            except Exception as exc:
                raise SetupRefused("get_peft_model", exc, ("lora",)) from None
        if checkpointing:  # what Trainer.train does before the first step
            try:
                compat.enable_activation_checkpointing(model, checkpoint_kwargs)
            except Exception as exc:
                raise SetupRefused("activation checkpointing", exc, ("training", "gradient_checkpointing")) from None
    steps = schedule_steps or (args.max_steps if args.max_steps > 0 else DEFAULT_SCHEDULE_STEPS)
    notes = []
    if args.max_steps <= 0 and schedule_steps is None:
        notes.append(f"the LR schedule spans {steps} steps (the recipe sets no max_steps)")
    try:
        trainer, optimizer, scheduler = optimizer_and_scheduler(model, args, steps)
    except Exception as exc:
        def refuses(kw):
            trial = training_arguments(kw, output_dir=output_dir, on_cpu=on_cpu)
            return _refuses(lambda: optimizer_and_scheduler(model, trial, steps))

        key = blame_key(kwargs, refuses)
        raise SetupRefused("the optimizer and LR scheduler", exc, ("training", key) if key else ("training", "optim")) from None
    return TrainingSetup(
        model=model, args=args, trainer=trainer, optimizer=optimizer, scheduler=scheduler, schedule_steps=steps,
        precision=recipe.training_dtype, weights_dtype=weights_dtype, quantized=quantized,
        checkpointing=checkpointing, scale=scale, notes=notes,
    )


def optimizer_and_scheduler(model, args, steps: int):
    """The Trainer that builds the recipe's optimizer and LR scheduler, as it does before training."""
    from transformers import Trainer

    with quiet():
        trainer = Trainer(model=model, args=args)
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    return trainer, trainer.optimizer, trainer.lr_scheduler


def _refuses(build: Callable[[], Any]) -> bool:
    try:
        build()
    except Exception:  # noqa: BLE001  any refusal counts: the caller compares with and without a key
        return True
    return False


@contextlib.contextmanager
def one_thread():
    """Run a tiny model's ops on one CPU thread: they are too small to split, and with several threads
    (two pytest-xdist workers on two cores) the threads wait on each other; measured 50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu"):
    """Mixed precision as the Trainer (through accelerate) applies it to the forward pass."""
    import torch

    if precision == "float32":
        yield
        return
    with torch.autocast(device, dtype=getattr(torch, precision)):
        yield
