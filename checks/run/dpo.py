"""cpu-step for a DPO recipe: one real step through TRL's DPOTrainer on the tiny-random model, with a tiny
preference dataset and a word-level tokenizer built in code.

DPOTrainer builds what it builds for the real run: the DPOConfig from the training and dpo sections, peft's
adapters from the lora section (or, for a full fine-tune, the reference model loaded again from the
checkpoint), its fused LM head, the dataset's tokenization and its collator. The step's loss is its own
`compute_loss`; the bookkeeping (gradients, frozen base, changed adapters) is run_real_step's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from recipe_checks import compat
from recipe_checks.library_warnings import quiet
from recipe_checks.run.setup import (Scale, SetupRefused, TrainingSetup, autocast, blame_key, load_model, trainer_output_dir,
                              training_kwargs, trusted)
from recipe_checks.run.step import StepReport, run_real_step

# The reference log-probs equal the policy's before any update (the adapters start as the identity, the
# reference model is the same checkpoint): the rewards beta * (policy - reference) are 0 up to rounding.
REWARD_TOLERANCE = 1e-3


@dataclass
class DpoStart:
    """What the first micro-batch's DPO metrics say about the policy against its reference, before any update."""

    rewards_chosen: float
    rewards_rejected: float
    loss: float
    loss_types: list[str] = field(default_factory=list)

    @property
    def reference_matches(self) -> bool:
        return all(math.isfinite(x) and abs(x) <= REWARD_TOLERANCE for x in (self.rewards_chosen, self.rewards_rejected))


def preference_rows(vocab_size: int, pairs: int, max_length: int, seed: int, reserved: set[int]) -> dict[str, list[str]]:
    """`pairs` fixed preference pairs of words 'w{i}' (the tiny tokenizer's vocabulary), prompt + completion
    within max_length with room for the eos DPOTrainer appends: the same rows every run (seeded)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    words = [i for i in range(vocab_size) if i not in reserved]
    prompt_len = max(1, (max_length - 1) // 2)
    completion_len = max(1, max_length - 1 - prompt_len)

    def text(n: int) -> str:
        picks = torch.randint(0, len(words), (n,), generator=generator).tolist()
        return " ".join(f"w{words[i]}" for i in picks)

    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(pairs):
        rows["prompt"].append(text(prompt_len) + " ")
        rows["chosen"].append(text(completion_len))
        rows["rejected"].append(text(max(1, completion_len - 1)))
    return rows


def dpo_step(recipe, model_path: str, config: dict, scale: Scale, *, weights_dtype: str,
             kwargs: dict | None = None, seed: int = 0) -> tuple[StepReport, DpoStart]:
    """One real DPO step of the recipe, as DPOTrainer runs it, on the tiny model at `model_path`.
    `kwargs`: TrainingArguments kwargs instead of the recipe's (to find the key a failure comes from)."""
    from datasets import Dataset

    from recipe_checks.fixtures.tiny import tiny_tokenizer
    from recipe_checks.recipe.library import lora_config
    from recipe_checks.recipe.validate import library_kwargs
    from recipe_checks.run.setup import vocab_size

    length = recipe.dpo.max_length
    scale = dataclasses.replace(scale, seq_len=min(scale.seq_len, length) if length is not None else scale.seq_len)
    training = training_kwargs(recipe, scale) if kwargs is None else kwargs
    dpo = {**library_kwargs(recipe.dpo), "max_length": scale.seq_len}
    output_dir = trainer_output_dir()
    args = _dpo_config(training, dpo, output_dir)
    text = config.get("text_config") or config
    vocab = vocab_size(config)
    tokenizer = tiny_tokenizer(vocab, eos_token_id=text.get("eos_token_id"), bos_token_id=text.get("bos_token_id"),
                               pad_token_id=text.get("pad_token_id"))
    reserved = set(tokenizer.all_special_ids)
    pairs = scale.micro_batch * (scale.gradient_accumulation + 1)
    dataset = Dataset.from_dict(preference_rows(vocab, pairs, scale.seq_len, seed, reserved))
    model = load_model(recipe, model_path, weights_dtype=weights_dtype)
    peft_config = None
    if recipe.lora is not None:
        try:
            peft_config = lora_config(library_kwargs(recipe.lora))
        except Exception as exc:
            raise SetupRefused("peft.LoraConfig", exc, ("lora",)) from None

    def trainer_for(dpo_kwargs: dict, base):
        from trl import DPOTrainer

        with quiet(), _no_dataset_progress_bars():
            return DPOTrainer(model=base, args=_dpo_config(training, dpo_kwargs, output_dir), train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config)

    try:
        trainer = trainer_for(dpo, model)
    except Exception as exc:
        def refuses(kept: dict) -> bool:
            try:
                trainer_for({**kept, "max_length": scale.seq_len},
                            load_model(recipe, model_path, weights_dtype=weights_dtype))
            except Exception:  # noqa: BLE001  any refusal counts: blame_key compares with and without a key
                return True
            return False

        key = blame_key({k: v for k, v in library_kwargs(recipe.dpo).items()}, refuses)
        raise SetupRefused("DPOTrainer", exc, ("dpo", key) if key else ("dpo",)) from None
    checkpointing, checkpoint_kwargs = compat.activation_checkpointing(trainer.args)
    with quiet():
        if checkpointing:  # what Trainer.train does before the first step
            compat.enable_activation_checkpointing(trainer.model, checkpoint_kwargs)
        steps = args.max_steps if args.max_steps > 0 else 1000
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        batches = _batches(trainer, scale.gradient_accumulation + 1)
    setup = TrainingSetup(
        model=trainer.model, args=trainer.args, trainer=trainer, optimizer=trainer.optimizer,
        scheduler=trainer.lr_scheduler, schedule_steps=steps, precision=recipe_precision(trainer.args),
        weights_dtype=weights_dtype, quantized=bool(getattr(model, "is_loaded_in_4bit", False)
                                                    or getattr(model, "is_loaded_in_8bit", False)),
        checkpointing=checkpointing, scale=scale,
        notes=["DPOTrainer's step: chosen and rejected rows in one forward, the reference under no_grad"
               + (" (adapters disabled)" if peft_config is not None else
                  " (precomputed)" if args.precompute_ref_log_probs else " (a second model)")],
    )
    metrics = compat.trl_metrics(trainer)

    def loss_of(batch):
        return trainer.compute_loss(trainer.model, batch)

    try:
        report = run_real_step(setup, recipe, vocab_size=vocab, seed=seed, batches=batches, loss_of=loss_of)
    except SetupRefused:  # the step itself is not to be trusted: no key of the recipe is to blame
        raise
    except Exception as exc:  # what DPOTrainer refuses only when it computes a loss (an unknown loss_type)
        def step_fails(kept: dict) -> bool:
            try:
                trial = trainer_for({**kept, "max_length": scale.seq_len},
                                    load_model(recipe, model_path, weights_dtype=weights_dtype))
                with quiet(), autocast(recipe_precision(trial.args)):
                    trial.compute_loss(trial.model, _batches(trial, 1)[0])
            except Exception:  # noqa: BLE001  any failure counts: blame_key compares with and without a key
                return True
            return False

        key = blame_key(dict(library_kwargs(recipe.dpo)), step_fails)
        raise SetupRefused("DPOTrainer's step", exc, ("dpo", key) if key else ("dpo",)) from None
    # the sequence length a DPO step is scaled from is dpo.max_length, not training.max_seq_length
    report.notes = [note.replace(f"max_seq_length {scale.seq_len} (recipe: {recipe.training.max_seq_length})",
                                 f"dpo.max_length {scale.seq_len} (recipe: {length})") for note in report.notes]
    start = DpoStart(rewards_chosen=metrics["rewards/chosen"][0], rewards_rejected=metrics["rewards/rejected"][0],
                     loss=report.losses[0] if report.losses else math.nan, loss_types=list(args.loss_type))
    return report, start


def recipe_precision(args) -> str:
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"


def _dpo_config(training: dict, dpo: dict, output_dir: str):
    from recipe_checks.recipe.library import dpo_config

    kwargs = {"output_dir": output_dir, "report_to": [], "use_cpu": True, "save_strategy": "no", "disable_tqdm": True}
    # tf32 is a property of the target GPU (RC401); the machine's keys are set here
    training = {k: v for k, v in training.items() if k != "tf32" and k not in kwargs}
    try:
        with quiet():
            return dpo_config(training, dpo, **kwargs)
    except Exception as exc:
        def refuses(kept: dict) -> bool:
            try:
                with quiet():
                    dpo_config({k[1]: v for k, v in kept.items() if k[0] == "training"},
                               {k[1]: v for k, v in kept.items() if k[0] == "dpo"}, **kwargs)
            except Exception:  # noqa: BLE001
                return True
            return False

        written = {("dpo", k): v for k, v in dpo.items()} | {("training", k): v for k, v in training.items()}
        key = blame_key(written, refuses)
        raise SetupRefused("DPOConfig", exc, key or ("dpo",)) from None


def _batches(trainer, count: int) -> list[dict[str, Any]]:
    """The first `count` batches of DPOTrainer's own dataloader (its collator: chosen rows over rejected)."""
    out = []
    for batch in trainer.get_train_dataloader():
        out.append(batch)
        if len(out) == count:
            break
    return out


@contextlib.contextmanager
def _no_dataset_progress_bars():
    """datasets draws a progress bar per map on stderr: DPOTrainer maps the dataset three times."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


@trusted("DPOTrainer.train")
def dpo_training(recipe, model_path: str, config: dict, scale: Scale, *, weights_dtype: str, steps: int,
                 seed: int = 0):
    """`steps` optimizer steps through DPOTrainer.train on fixed preference pairs; what the run shows (a
    TrainReport: the DPO loss on the first pairs before and after, in eval mode, must fall)."""
    import time

    import torch
    from datasets import Dataset

    from recipe_checks.fixtures.tiny import tiny_tokenizer
    from recipe_checks.recipe.library import lora_config
    from recipe_checks.recipe.validate import library_kwargs
    from recipe_checks.run.setup import vocab_size
    from recipe_checks.run.step import module_of
    from recipe_checks.run.train import TrainReport, short_run_kwargs

    length = recipe.dpo.max_length
    scale = dataclasses.replace(scale, seq_len=min(scale.seq_len, length) if length is not None else scale.seq_len)
    kwargs, notes = short_run_kwargs(recipe, scale, steps)
    output_dir = trainer_output_dir()
    args = _dpo_config(kwargs, {**library_kwargs(recipe.dpo), "max_length": scale.seq_len}, output_dir)
    text = config.get("text_config") or config
    vocab = vocab_size(config)
    tokenizer = tiny_tokenizer(vocab, eos_token_id=text.get("eos_token_id"), bos_token_id=text.get("bos_token_id"),
                               pad_token_id=text.get("pad_token_id"))
    rows = scale.micro_batch * scale.gradient_accumulation
    dataset = Dataset.from_dict(preference_rows(vocab, rows, scale.seq_len, seed, set(tokenizer.all_special_ids)))
    model = load_model(recipe, model_path, weights_dtype=weights_dtype)
    peft_config = lora_config(library_kwargs(recipe.lora)) if recipe.lora is not None else None
    from trl import DPOTrainer

    with quiet(), _no_dataset_progress_bars():
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
    report = TrainReport(steps=steps, notes=[*notes, f"DPOTrainer.train on {rows} fixed preference pair(s)"])
    scale_note = scale.describe(recipe)
    if scale_note:
        report.notes.append(scale_note.replace(f"max_seq_length {scale.seq_len} (recipe: {recipe.training.max_seq_length})",
                                               f"dpo.max_length {scale.seq_len} (recipe: {length})"))
    probe = _batches(trainer, 1)[0]
    trained = trainer.model
    trainable = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in trained.named_parameters() if not p.requires_grad}

    def probe_loss() -> float:
        was_training = trained.training
        trained.eval()
        with quiet(), torch.no_grad(), autocast(recipe_precision(args)):  # TRL's deprecated checkpointing calls warn
            loss = trainer.compute_loss(trained, probe)
        trained.train(was_training)
        return float(loss.float().item())

    report.first_loss = probe_loss()
    with quiet():
        started = time.perf_counter()
        trainer.train()
        report.seconds = time.perf_counter() - started
    report.losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    report.last_loss = probe_loss()
    # each step's tokens: the chosen and the rejected rows, through the policy and the reference
    report.tokens_per_second = steps * rows * 2 * scale.seq_len / report.seconds if report.seconds else 0.0
    params = dict(trained.named_parameters())
    report.adapters_changed = any(not torch.equal(params[n].detach(), before) for n, before in trainable.items())
    report.base_changed = sorted({module_of(n) for n, before in frozen.items() if not torch.equal(params[n].detach(), before)})
    return report
