"""RC120: the `unsloth` section and the other sections say the same thing the same way."""

from __future__ import annotations

from recipe_checks.rules.base import Rule
from recipe_checks.unsloth import unsloth_data, written

# get_peft_model's defaults that differ from peft.LoraConfig's (the lora section's): unset, Unsloth trains another adapter
_PEFT_DEFAULTS = {"r": 8, "lora_alpha": 8, "target_modules": None}


class UnslothContradiction(Rule):
    """
    ## What it checks
    With an `unsloth` section (FastLanguageModel.from_pretrained and get_peft_model's arguments), each setting
    that another section also decides agrees with it: `unsloth.load_in_4bit` / `load_in_8bit` with
    `quantization` (Unsloth loads in 4-bit by default), `unsloth.max_seq_length` with `training.max_seq_length`,
    `unsloth.dtype` with `model.torch_dtype` and `training.bf16`/`fp16`, `unsloth.use_gradient_checkpointing`
    with `training.gradient_checkpointing`, `unsloth.full_finetuning` with the presence of `lora`; and in `lora`,
    the keys whose default differs between get_peft_model and peft.LoraConfig (r: 16 vs 8, lora_alpha: 16 vs 8,
    target_modules: all seven projections vs the model's peft default) are written out.

    ## Why it matters
    The training script hands one of the two values to Unsloth and the other to the Trainer or to nobody; the
    checks would judge one model while the GPU trains another: a 16-bit model traced where Unsloth loads 4-bit,
    a rank-8 adapter checked where get_peft_model builds rank 16.

    ## Example
        unsloth: {max_seq_length: 4096}
        lora: {lora_alpha: 32}
        training: {max_seq_length: 2048}

    ## Use instead
        unsloth: {max_seq_length: 2048}
        quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true,
                       bnb_4bit_compute_dtype: bfloat16}
        lora: {r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
        training: {max_seq_length: 2048}
    """

    id = "RC120"
    name = "unsloth-contradiction"
    check = "schema"
    reads = frozenset({"unsloth", "model", "quantization", "lora", "training"})
    why = "the script gives one value to Unsloth and the other to the Trainer: the checks judge another run than the GPU's"

    def run(self, ctx):
        recipe = ctx.recipe
        u = recipe.unsloth
        if u is None:
            return
        yield from self._quantization(ctx, recipe, u)
        yield from self._method(ctx, recipe, u)
        yield from self._sequence_length(ctx, recipe, u)
        yield from self._dtype(ctx, recipe, u)
        yield from self._checkpointing(ctx, recipe, u)
        yield from self._lora_defaults(ctx, recipe)

    def finding(self, ctx, message, key_path=(), **kwargs):
        kwargs.setdefault("at_value", len(key_path) > 1)  # a whole section: point at its key, not its first line
        return super().finding(ctx, message, key_path, **kwargs)

    def _at(self, section, key: str, fallback: tuple) -> tuple:
        return (fallback[0], key) if written(section, key) else fallback

    def _quantization(self, ctx, recipe, u):
        q = recipe.quantization
        q4 = q is not None and q.load_in_4bit
        q8 = q is not None and q.load_in_8bit
        default = "" if written(u, "load_in_4bit") else " (its default)"
        if u.full_finetuning:
            if written(u, "load_in_4bit") and u.load_in_4bit or u.load_in_8bit or q4 or q8:
                key = ("quantization",) if (q4 or q8) else ("unsloth", "load_in_8bit" if u.load_in_8bit else "load_in_4bit")
                yield self.finding(
                    ctx, "unsloth.full_finetuning is true, and the recipe also quantizes the base model: Unsloth "
                    "then turns 4-bit and 8-bit loading off ('disabling LoRA / QLoRA', unsloth/models/loader.py:1264)",
                    key, help="a full fine-tune trains 16-bit weights: remove the quantization, or train LoRA "
                    "(unsloth.full_finetuning: false and a lora section)")
            return
        if u.load_in_4bit and u.load_in_8bit:
            yield self.finding(
                ctx, f"unsloth.load_in_4bit is true{default} and unsloth.load_in_8bit is true: which one Unsloth "
                "loads is its choice, not the recipe's", ("unsloth", "load_in_8bit"),
                help="write unsloth.load_in_4bit: false for 8-bit, or remove load_in_8bit")
        if u.load_in_4bit and not q4 and not u.load_in_8bit and not q8:
            where = "has no quantization section" if q is None else "quantization.load_in_4bit is false"
            yield self.finding(
                ctx, f"unsloth.load_in_4bit is true{default}, but the recipe {where}: Unsloth loads the model in "
                "4-bit (NF4, double quantization, compute in the model's dtype) while the checks judge a 16-bit one",
                self._at(u, "load_in_4bit", ("unsloth",)),
                help="write the 4-bit config Unsloth builds: quantization: {load_in_4bit: true, bnb_4bit_quant_type: "
                "nf4, bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: bfloat16}; or train 16-bit LoRA with "
                "unsloth.load_in_4bit: false")
        elif q4 and written(u, "load_in_4bit") and not u.load_in_4bit:
            yield self.finding(
                ctx, "unsloth.load_in_4bit is false, but quantization.load_in_4bit is true: Unsloth loads in 4-bit "
                "whenever it is given a 4-bit quantization_config (unsloth/models/loader.py:442-456)",
                ("unsloth", "load_in_4bit"), help="make them agree: both true (QLoRA) or remove the quantization")
        if q8 != u.load_in_8bit and (q8 or written(u, "load_in_8bit")):
            yield self.finding(
                ctx, f"unsloth.load_in_8bit is {str(u.load_in_8bit).lower()} but quantization.load_in_8bit is "
                f"{str(q8).lower()}", self._at(u, "load_in_8bit", ("unsloth",)),
                help="make them agree: both true (8-bit LoRA) or both false")
        if u.load_in_fp8 is not False and (q4 or q8):
            yield self.finding(
                ctx, f"unsloth.load_in_fp8 is {u.load_in_fp8!r} and the quantization section loads bitsandbytes "
                f"{'4' if q4 else '8'}-bit weights", ("unsloth", "load_in_fp8"),
                help="choose one quantization: remove unsloth.load_in_fp8 or the bitsandbytes settings")

    def _method(self, ctx, recipe, u):
        if u.full_finetuning and recipe.lora is not None:
            yield self.finding(
                ctx, "unsloth.full_finetuning is true and the recipe has a lora section: with full fine-tuning on, "
                "get_peft_model 'has no effect' (unsloth/models/llama.py:3126) and every weight trains",
                ("unsloth", "full_finetuning"), help="remove the lora section for a full fine-tune, or set "
                "unsloth.full_finetuning: false to train the adapters")
        elif not u.full_finetuning and recipe.lora is None:
            yield self.finding(
                ctx, "the recipe has no lora section (a full fine-tune), but unsloth.full_finetuning is "
                f"{'false' if written(u, 'full_finetuning') else 'unset (false)'}: Unsloth loads the model for "
                "LoRA and the script would train adapters the recipe does not describe",
                self._at(u, "full_finetuning", ("unsloth",)),
                help="write unsloth.full_finetuning: true (with unsloth.load_in_4bit: false), or add the lora section")

    def _sequence_length(self, ctx, recipe, u):
        t = recipe.training
        if u.max_seq_length == t.max_seq_length:
            return
        mark = {True: "", False: " (default)"}
        key = ("unsloth", "max_seq_length") if written(u, "max_seq_length") else (
            ("training", "max_seq_length") if written(t, "max_seq_length") else ("unsloth",))
        yield self.finding(
            ctx, f"unsloth.max_seq_length is {u.max_seq_length:,}{mark[written(u, 'max_seq_length')]} but "
            f"training.max_seq_length is {t.max_seq_length:,}{mark[written(t, 'max_seq_length')]}: Unsloth scales "
            "RoPE and chooses its checkpointing by the first, the checks trace the second", key,
            help=f"write the length the run trains at in both, e.g. max_seq_length: {t.max_seq_length} in unsloth")

    def _dtype(self, ctx, recipe, u):
        if u.dtype is None:
            return
        t = recipe.training
        clash = {"bfloat16": ("fp16", t.fp16), "float16": ("bf16", t.bf16)}.get(u.dtype)
        if clash is not None and clash[1]:
            yield self.finding(
                ctx, f"unsloth.dtype is {u.dtype} but training.{clash[0]} is true: the weights load in one "
                "half precision and the Trainer's autocast computes in the other", ("unsloth", "dtype"),
                help=f"train in the dtype the model loads in: training.{'bf16' if u.dtype == 'bfloat16' else 'fp16'}: true")
        torch_dtype = recipe.model.torch_dtype
        if torch_dtype not in (None, "auto") and torch_dtype != u.dtype:
            yield self.finding(
                ctx, f"unsloth.dtype is {u.dtype} but model.torch_dtype is {torch_dtype}: FastLanguageModel takes "
                "the dtype as `dtype`, so model.torch_dtype reaches no loader", ("unsloth", "dtype"),
                help="write the dtype once, as unsloth.dtype, and remove model.torch_dtype")

    def _checkpointing(self, ctx, recipe, u):
        t = recipe.training
        extra = t.model_extra or {}
        key = "activation_checkpointing" if "activation_checkpointing" in extra else "gradient_checkpointing"
        if not (written(t, key) or key in extra):
            return
        trainer = bool(extra.get(key, t.gradient_checkpointing))
        if trainer == u.checkpointing:
            return
        value = u.use_gradient_checkpointing
        yield self.finding(
            ctx, f"training.{key} is {str(trainer).lower()} but unsloth.use_gradient_checkpointing is {value!r}"
            f"{'' if written(u, 'use_gradient_checkpointing') else ' (its default)'}: get_peft_model checkpoints the "
            "model by Unsloth's setting and the Trainer restores it (unsloth/models/llama.py:3600-3604)",
            ("training", key),
            help="decide it once, in unsloth.use_gradient_checkpointing (\"unsloth\", true or false), and make "
            f"training.{key} agree or remove it")

    def _lora_defaults(self, ctx, recipe):
        lora = recipe.lora
        if lora is None:
            return
        defaults = unsloth_data()["get_peft_model_defaults"]
        for key, peft_default in _PEFT_DEFAULTS.items():
            if written(lora, key):
                continue
            unsloth_default = defaults[key]
            shown = ", ".join(unsloth_default) if isinstance(unsloth_default, list) else unsloth_default
            yield self.finding(
                ctx, f"lora.{key} is unset: Unsloth's get_peft_model defaults it to {shown}, peft's LoraConfig "
                f"to {peft_default if peft_default is not None else 'the model type default'}; the checks would judge "
                "another adapter than the one trained", ("lora",),
                help=f"write lora.{key} (e.g. {key}: {unsloth_default if not isinstance(unsloth_default, list) else '[' + shown + ']'})")
