"""RC405: the 4-bit compute dtype agrees with the training precision."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class ComputeDtypeMismatch(Rule):
    """
    ## What it checks
    With `load_in_4bit`, `bnb_4bit_compute_dtype` matches the training precision: bfloat16 with
    `bf16: true`, float16 with `fp16: true`. A mismatch (float16 compute under bf16 training, or the
    reverse) is an error; float32 compute under half-precision training, set or left unset (the
    default), is a warning.

    ## Why it matters
    The adapters and activations run in the training dtype while the base matmuls run in the compute
    dtype: every layer casts back and forth, and float16 compute brings fp16's overflow into a bf16
    run. An unset compute dtype silently runs every 4-bit matmul in fp32, several times slower.

    ## Example
        quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: float16}
        training: {bf16: true}

    ## Use instead
        quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: bfloat16}
        training: {bf16: true}
    """

    id = "RC405"
    name = "compute-dtype-mismatch"
    check = "precision"
    reads = frozenset({"quantization", "training"})
    why = "a compute dtype other than the training dtype casts every layer and mixes fp16 into bf16 runs"

    def run(self, ctx):
        recipe = ctx.recipe
        q = recipe.quantization
        if q is None or not q.load_in_4bit:
            return
        training = recipe.training_dtype
        compute = q.bnb_4bit_compute_dtype or "float32"
        if compute == training or compute not in ("float32", "float16", "bfloat16"):
            return
        if compute == "float32":
            unset = q.bnb_4bit_compute_dtype is None
            yield self.finding(
                ctx,
                ("bnb_4bit_compute_dtype is not set, so" if unset else "bnb_4bit_compute_dtype is float32:")
                + f" 4-bit matmuls run in float32 while training is {training}",
                ("quantization", "load_in_4bit" if unset else "bnb_4bit_compute_dtype"),
                severity=Severity.WARNING,
                help=f"set bnb_4bit_compute_dtype: {training}",
            )
            return
        if training == "float32":
            return  # fp32 training with half compute is a deliberate memory/speed trade
        yield self.finding(
            ctx,
            f"bnb_4bit_compute_dtype {compute} disagrees with {'bf16' if training == 'bfloat16' else 'fp16'} training",
            ("quantization", "bnb_4bit_compute_dtype"),
            help=f"set bnb_4bit_compute_dtype: {training}",
        )
