"""RC803: DeepSpeed's batch sizes agree with the recipe and with the number of GPUs."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class DeepSpeedBatchSize(Rule):
    """
    ## What it checks
    Where a DeepSpeed config gives numbers (not "auto"): `train_micro_batch_size_per_gpu` is
    `training.per_device_train_batch_size`, its `gradient_accumulation_steps` is the recipe's, and
    `train_batch_size` is micro-batch x accumulation x world size. (Where the recipe does not state the
    number of GPUs, `train_batch_size` gives it when the section is read, and RC801 reports one that is
    no multiple of micro-batch x accumulation.)

    ## Why it matters
    DeepSpeed asserts `train_batch_size == micro_batch_per_gpu * gradient_acc_step * world_size` when the
    engine starts (runtime/config.py `_batch_assertion`), and transformers' integration refuses a number
    that differs from TrainingArguments: the run stops after the model is loaded, on every GPU.

    ## Example
        # ds.json: {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, ...}
        training: {per_device_train_batch_size: 4, gradient_accumulation_steps: 4}
        distributed: {deepspeed: ds.json, world_size: 8}    # 4 x 4 x 8 = 128, not 64

    ## Use instead
        # ds.json: {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        #           "gradient_accumulation_steps": "auto", ...}: the Trainer fills them
    """

    id = "RC803"
    name = "deepspeed-batch-size"
    check = "schema"
    reads = frozenset({"distributed", "training"})
    why = "DeepSpeed asserts train_batch_size = micro-batch x accumulation x world size when the engine starts"

    def run(self, ctx):
        files = ctx.loaded.distributed_files
        distributed = ctx.recipe.distributed
        if files is None or distributed is None or not files.batch:
            return
        training = ctx.recipe.training
        at = ("distributed", "deepspeed") if "deepspeed" in files.files else ("distributed", "accelerate_config")
        micro, steps, total = (files.batch.get(k) for k in
                               ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"))
        ok = True
        for setting, key in ((micro, "per_device_train_batch_size"), (steps, "gradient_accumulation_steps")):
            if setting is not None and setting.value != getattr(training, key):
                ok = False
                yield self.finding(
                    ctx, f"{setting.place} is {setting.value} but training.{key} is {getattr(training, key)}: the "
                    "Trainer refuses the mismatch", at,
                    help=f'write "{setting.place.key}": "auto" (the Trainer fills it from training.{key}), or make them agree',
                )
        if total is None or not ok:
            return
        per_rank = (micro.value if micro else training.per_device_train_batch_size) * (
            steps.value if steps else training.gradient_accumulation_steps)
        if distributed.size_known:
            if total.value != per_rank * distributed.size:
                yield self.finding(
                    ctx, f"{total.place} is {total.value}, not micro-batch x accumulation x world size = "
                    f"{per_rank} x {distributed.size} = {per_rank * distributed.size}: DeepSpeed refuses it", at,
                    help=f'write "train_batch_size": "auto" (or {per_rank * distributed.size}), or change the world size '
                         f"to {total.value // per_rank}" if total.value % per_rank == 0 else
                         f'write "train_batch_size": "auto" (or {per_rank * distributed.size})',
                )
