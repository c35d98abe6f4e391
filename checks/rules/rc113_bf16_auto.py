"""RC113: `bf16: auto` in an Axolotl config is resolved against the target GPU, as Axolotl resolves it locally."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.formats import translation_of
from recipe_checks.rules.base import Rule


class Bf16AutoResolved(Rule):
    """
    ## What it checks
    An Axolotl config with `bf16: auto` (Axolotl's default when bf16 is not set) trains in bf16 on a GPU
    with bf16 (compute capability 8.0 or newer) and otherwise in fp16, unless fp16 is set
    (normalize_config). Axolotl decides on the GPU it runs on; recipe-checks decides on each target GPU
    and says which it chose, and the precision, quantization and memory checks of that GPU see the
    resolved value (the model and the 4-bit compute dtype follow it, as Axolotl's cfg.torch_dtype does).

    ## Why it matters
    The same config trains in bf16 on an A100 and in fp16 on a T4: a family that overflows in fp16
    (Gemma, T5) fails only on the second, and the fp16 run needs a loss scaler.

    ## Example
        base_model: google/gemma-2-9b
        bf16: auto            # fp16 on a T4

    ## Use instead
        bf16: true            # and target a GPU with bf16, or fp16: true where the family allows it
    """

    id = "RC113"
    name = "bf16-auto-resolved"
    check = "precision"
    severity = Severity.INFO
    reads = frozenset({"training"})
    needs = frozenset({"gpu"})
    why = "Axolotl resolves bf16: auto on the machine it runs on: the target GPU decides the precision"

    def run(self, ctx):
        translation = translation_of(ctx.state)
        gpu = ctx.gpu
        if translation is None or translation.bf16_auto is None or gpu is None:
            return
        training = ctx.recipe.training  # resolved for this GPU
        chosen = "bf16" if training.bf16 else "fp16" if training.fp16 else "float32"
        written = "bf16: auto" if translation.bf16_auto else "bf16 unset (Axolotl's default is auto)"
        yield self.finding(
            ctx,
            f"{written} trains in {chosen} on {gpu.key} (bf16 {'supported' if gpu.supports_bf16 else 'not supported'}, "
            f"compute capability {gpu.compute_capability})",
            translation.bf16_auto or ("training",),
            help="set bf16: true or fp16: true to fix the precision whatever GPU the run lands on",
        )
