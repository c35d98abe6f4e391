"""The typed recipe: pydantic models whose fields are the keyword arguments users already write.

Sections mirror transformers.BitsAndBytesConfig, peft.LoraConfig and transformers.TrainingArguments;
the fields typed here carry the ranges that make sense, the rest of each library's kwargs are
accepted by name (see recipe_checks.recipe.library) so a recipe can be copied from a training script.
"""

from __future__ import annotations

import enum
import functools
import math
import operator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from recipe_checks import limits
from recipe_checks.recipe import LAUNCHER
from recipe_checks.recipe.library import Keyword, checkpoint_keywords, liger_keywords
from recipe_checks.regex_safety import describe_problem, lora_pattern_problems

TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


class Method(str, enum.Enum):
    FULL = "full"
    LORA = "lora"
    DORA = "dora"
    QLORA = "qlora"
    QDORA = "qdora"

    @property
    def label(self) -> str:
        return {"full": "full fine-tune", "lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA", "qdora": "QDoRA"}[self.value]


def _plain_value(value: Any) -> Any:
    """A library kwarg the schema does not type: finite numbers, integers that fit in int64 (they
    reach torch and C code), lists of at most MAX_LIST_ITEMS entries, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limits.MAX_INT:
        raise ValueError("must fit in a 64-bit integer")
    if isinstance(value, list):
        if len(value) > limits.MAX_LIST_ITEMS:
            raise ValueError(f"a list of {len(value):,} entries; at most {limits.MAX_LIST_ITEMS:,} are accepted")
        for item in value:
            _plain_value(item)
    elif isinstance(value, dict):
        for item in value.values():
            _plain_value(item)
    return value


# A list of names or indexes: every entry is matched against every module of the model.
_Names = Annotated[list[str], Field(max_length=limits.MAX_LIST_ITEMS)]


class _Section(BaseModel):
    # strict: '2e-4' (a string to PyYAML) or 'true' in quotes must not turn into a number or a bool
    # silently, since the training script that reads the same YAML would pass the string through.
    # allow_inf_nan=False: `.inf` and `.nan` are YAML floats that no training setting takes.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, allow_inf_nan=False)


class _LibrarySection(_Section):
    """A section that also takes any other keyword argument of its library class, by name."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    __pydantic_extra__: dict[str, Annotated[Any, AfterValidator(_plain_value)]] = Field(init=False)


class ModelSpec(_Section):
    id: str | None = Field(None, min_length=1, description="Hub id, e.g. meta-llama/Llama-3.1-8B")
    config: str | None = Field(
        None, min_length=1, description="A config.json or a model directory, relative to the recipe file"
    )
    revision: str | None = None
    torch_dtype: Literal[TORCH_DTYPES] | None = None  # type: ignore[valid-type]
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] | None = None  # type: ignore[valid-type]
    trust_remote_code: bool = False
    component: str | None = Field(
        None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
        description="The diffusers pipeline subfolder trained, e.g. transformer (black-forest-labs/FLUX.1-dev)",
    )

    @model_validator(mode="after")
    def _needs_id_or_config(self) -> ModelSpec:
        if self.id is None and self.config is None:
            raise ValueError("model needs an 'id' (hub id) or a 'config' (path to a config.json)")
        return self

    @property
    def name(self) -> str:
        return self.id or self.config or "?"


class Quantization(_LibrarySection):
    """transformers.BitsAndBytesConfig kwargs (quant_method: fp8 selects FineGrainedFP8Config)."""

    quant_method: Literal["bitsandbytes", "fp8"] = "bitsandbytes"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: str = "fp4"  # BitsAndBytesConfig's default; checked by rule RC503
    bnb_4bit_compute_dtype: str | None = None  # None means float32 in bitsandbytes; checked by RC504
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: str | None = None
    llm_int8_threshold: float = Field(6.0, ge=0)
    llm_int8_skip_modules: _Names | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False


class Lora(_LibrarySection):
    """peft.LoraConfig kwargs."""

    r: int = Field(8, ge=1, le=4096)
    lora_alpha: float = Field(8, gt=0, le=limits.MAX_SCALE)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: _Names | str | None = None
    exclude_modules: _Names | str | None = None
    target_parameters: _Names | None = None
    layers_to_transform: Annotated[list[int], Field(max_length=limits.MAX_LIST_ITEMS)] | int | None = None
    layers_pattern: _Names | str | None = None
    modules_to_save: _Names | None = None
    # peft's regex-keyed settings, typed only so that their patterns are checked before peft matches them
    rank_pattern: dict[str, Any] | None = None
    alpha_pattern: dict[str, Any] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    task_type: Literal[
        "CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"
    ] | None = "CAUSAL_LM"

    @field_validator("target_modules", "exclude_modules", "layers_pattern", "target_parameters", "modules_to_save")
    @classmethod
    def _no_empty_names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else (value or [])
        if any(not name.strip() for name in names):
            raise ValueError("module names must not be empty")
        return value

    @field_validator("layers_to_transform")
    @classmethod
    def _non_negative_layers(cls, value: Any) -> Any:
        indexes = [value] if isinstance(value, int) else (value or [])
        if any(i < 0 for i in indexes):
            raise ValueError("layer indexes start at 0")
        if any(i >= limits.MAX_CONFIG_LAYERS for i in indexes):
            raise ValueError(f"layer indexes must be below {limits.MAX_CONFIG_LAYERS:,}, the most layers a model may have")
        return value

    @field_validator("target_modules", "exclude_modules", "layers_pattern", "rank_pattern", "alpha_pattern")
    @classmethod
    def _safe_regexes(cls, value: Any, info) -> Any:
        # peft matches these as regexes against every module name: refuse one that cannot be matched
        # safely (invalid, or able to backtrack exponentially) before peft ever sees it
        problems = lora_pattern_problems({info.field_name: value})
        if problems:
            raise ValueError(describe_problem(*problems[0]).split(": ", 1)[1])
        return value

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _finite_pattern_values(cls, value: Any) -> Any:
        for item in (value or {}).values():
            _plain_value(item)
        return value


# Training keys whose value the library passes on as keyword arguments to another function, each checked against
# that function's arguments in the installed libraries: key -> (those arguments, what the mapping holds, an example).
PASSED_ON = {
    "gradient_checkpointing_kwargs": (checkpoint_keywords, "keyword arguments of torch.utils.checkpoint.checkpoint",
                                      "{use_reentrant: false}"),
    "activation_checkpointing_kwargs": (checkpoint_keywords, "keyword arguments of torch.utils.checkpoint.checkpoint",
                                        "{use_reentrant: false}"),
    "liger_kernel_config": (liger_keywords, "Liger kernel flags, each true or false", "{rope: false}"),
}


def _no_function(value: Any) -> Any:
    raise ValueError("takes a Python function, which a recipe file cannot hold: remove it")


def _keyword_field(name: str, keyword: Keyword) -> tuple[Any, Any]:
    description = f"{keyword.receiver} argument '{name}'" + (f" ({keyword.takes})" if keyword.takes else "")
    if keyword.function_only:
        refused = Field(None, description=description, json_schema_extra={"not": {}})
        return Annotated[Any, AfterValidator(_no_function)], refused
    if keyword.types is None:  # the library does not say: any plain value, as for the sections' other kwargs
        return Annotated[Any, AfterValidator(_plain_value)], Field(None, description=description)
    return functools.reduce(operator.or_, keyword.types), Field(None, description=description)


@functools.cache
def kwargs_model(key: str) -> type[BaseModel]:
    """The mapping a PASSED_ON key holds, as a model: the receiving function's arguments, typed where it says."""
    keywords, _, _ = PASSED_ON[key]
    fields = {name: _keyword_field(name, keyword) for name, keyword in sorted(keywords().items())}
    title = "".join(part.title() for part in key.split("_"))
    return create_model(title, __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False), **fields)


def _mapping_of(key: str):
    _, holds, example = PASSED_ON[key]

    def check(value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"must be a mapping of {holds}, e.g. {example}")
        return value

    return BeforeValidator(check)


@functools.cache
def _passed_on_model() -> type[BaseModel]:
    fields = {key: (Annotated[kwargs_model(key) | None, _mapping_of(key)], None) for key in PASSED_ON}
    return create_model("PassedOn", __config__=ConfigDict(strict=True), **fields)


def _passed_on_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema of each PASSED_ON key: its mapping's arguments by name (generating it imports torch)."""
    properties = schema.setdefault("properties", {})
    for key, (_, holds, example) in PASSED_ON.items():
        mapping = kwargs_model(key).model_json_schema()
        mapping["description"] = f"A mapping of {holds}, e.g. {example}"
        title = " ".join(part.title() for part in key.split("_"))  # as pydantic titles a field
        properties[key] = {"anyOf": [mapping, {"type": "null"}], "default": None, "title": title}


class Training(_LibrarySection):
    """transformers.TrainingArguments kwargs, plus max_seq_length (the sequence length trained on)."""

    model_config = ConfigDict(json_schema_extra=_passed_on_schema)

    per_device_train_batch_size: int = Field(8, ge=1, le=limits.MAX_BATCH_SIZE)
    gradient_accumulation_steps: int = Field(1, ge=1, le=limits.MAX_ACCUMULATION_STEPS)
    learning_rate: float = Field(5e-5, gt=0, le=1)
    num_train_epochs: float = Field(3.0, gt=0, le=limits.MAX_STEPS)
    max_steps: int = Field(-1, ge=-1, le=limits.MAX_STEPS)
    warmup_steps: int | float = Field(0, ge=0, le=limits.MAX_STEPS)
    weight_decay: float = Field(0.0, ge=0, le=limits.MAX_SCALE)
    max_grad_norm: float = Field(1.0, ge=0, le=limits.MAX_SCALE)
    bf16: bool = False
    fp16: bool = False
    tf32: bool | None = None
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "linear"
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    max_seq_length: int = Field(1024, ge=1, le=10_000_000)
    seed: int = Field(42, ge=0, le=limits.MAX_SEED)

    # before the micro-batch check: a finding on the whole section would drop the mappings unchecked
    @model_validator(mode="after")
    def _passed_on_kwargs(self) -> Training:
        # the library hands these on unchecked (TrainingArguments) or drops a key it does not know (Liger):
        # each key and value is checked here, with its path, so RC102 and RC103 point at it
        given = {**(self.model_extra or {}), "gradient_checkpointing_kwargs": self.gradient_checkpointing_kwargs}
        given = {key: given[key] for key in PASSED_ON if given.get(key) is not None}
        if given:
            _passed_on_model().model_validate(given)
        return self

    @model_validator(mode="after")
    def _traceable_micro_batch(self) -> Training:
        tokens = self.per_device_train_batch_size * self.max_seq_length
        if tokens > limits.MAX_TRACE_TOKENS:
            raise ValueError(
                f"per_device_train_batch_size x max_seq_length is {tokens:,} tokens per micro-batch, more than the "
                f"{limits.MAX_TRACE_TOKENS:,} a training step is checked for"
            )
        return self

    @field_validator("max_steps")
    @classmethod
    def _max_steps_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_steps 0 trains nothing; use -1 to train for num_train_epochs")
        return value


class Dpo(_LibrarySection):
    """trl.DPOConfig's own kwargs (beta, loss_type, max_length, precompute_ref_log_probs, ...): a DPO recipe.
    The TrainingArguments that DPOConfig extends stay in `training`."""

    beta: float = Field(0.1, ge=0, le=limits.MAX_SCALE)
    loss_type: str | Annotated[list[str], Field(min_length=1, max_length=16)] = "sigmoid"
    max_length: int | None = Field(1024, ge=1, le=10_000_000)  # prompt + completion, per sequence
    precompute_ref_log_probs: bool = False

    @property
    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


_MAX_IMAGE_SIDE = 16_384  # pixels: 1M latent tokens an image for FLUX, past what any recipe trains on


class Diffusion(_Section):
    """What a diffusers training script (examples/dreambooth, examples/research_projects) feeds the
    diffusion transformer each step: the image size, the text length, and what was precomputed."""

    resolution: int | None = Field(None, ge=16, le=_MAX_IMAGE_SIDE, description="Square images: height and width")
    height: int | None = Field(None, ge=16, le=_MAX_IMAGE_SIDE)
    width: int | None = Field(None, ge=16, le=_MAX_IMAGE_SIDE)
    max_sequence_length: int = Field(512, ge=1, le=4096, description="T5 tokens per prompt (FluxPipeline's default: 512)")
    cache_latents: bool = False  # --cache_latents: images encoded once before training, the VAE deleted
    precompute_text_embeddings: bool = False  # the text encoders ran before training and are not loaded
    guidance_scale: float = Field(3.5, ge=0, le=limits.MAX_SCALE)  # the scripts' default; FLUX.1-dev is guidance-distilled
    weighting_scheme: Literal["none", "sigma_sqrt", "logit_normal", "mode", "cosmap"] = "none"

    @model_validator(mode="after")
    def _size_given(self) -> Diffusion:
        if self.resolution is None and (self.height is None or self.width is None):
            raise ValueError("give the image size: resolution (square), or height and width")
        for side in (self.image_height, self.image_width):
            if side % 16:
                raise ValueError(f"{side} is not a multiple of 16: FLUX packs 2x2 latent patches of the VAE's 8x downsampling")
        return self

    @property
    def image_height(self) -> int:
        return self.height if self.height is not None else self.resolution  # type: ignore[return-value]

    @property
    def image_width(self) -> int:
        return self.width if self.width is not None else self.resolution  # type: ignore[return-value]


class MixedPrecision(_Section):
    """torch.distributed.fsdp.MixedPrecisionPolicy's fields: the dtype the blocks are all-gathered and
    computed in, and the dtype gradients are reduce-scattered in (None: the parameters' own)."""

    param_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    reduce_dtype: Literal["float32", "bfloat16", "float16"] | None = None


class Fsdp(_Section):
    """torch.distributed.fsdp.fully_shard's keyword arguments (FSDP2), applied to each decoder block and to
    the root, as accelerate, torchtune and TRL apply it."""

    reshard_after_forward: bool = True  # False: the blocks stay unsharded from forward to backward (ZeRO-2-like)
    mp_policy: MixedPrecision | None = None
    offload_policy: Literal["cpu"] | None = None  # CPUOffloadPolicy: sharded parameters, gradients, states on the host


class Zero(_Section):
    """DeepSpeed's zero_optimization offload settings (its device names)."""

    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"  # optimizer states and fp32 master weights
    offload_param: Literal["none", "cpu", "nvme"] = "none"  # ZeRO-3 only: the parameter partitions


STRATEGIES = ("ddp", "fsdp", "zero1", "zero2", "zero3")


class Distributed(_Section):
    """How the recipe runs on several GPUs: data parallel (ddp), torch's FSDP2 (fsdp), or DeepSpeed's ZeRO
    stages (zero1, zero2, zero3). The world size is `world_size`, or `nodes` x `gpus_per_node`; `world_size:
    launcher` leaves it to the launcher (not checked: RC111).

    `deepspeed` (a DeepSpeed JSON) and `accelerate_config` (an `accelerate config` YAML), paths relative to
    the recipe file, are read into these fields before validation (recipe_checks.recipe.distributed_files; see
    docs/distributed-configs.md): the strategy, the world size and the options come from the files, and a
    field the recipe also writes and the file contradicts is a finding (RC801), not a silent win."""

    strategy: Literal[STRATEGIES]  # type: ignore[valid-type]
    world_size: Annotated[int, Field(ge=1, le=limits.MAX_WORLD_SIZE)] | Literal["launcher"] | None = None
    nodes: int | None = Field(None, ge=1, le=limits.MAX_WORLD_SIZE)
    gpus_per_node: int | None = Field(None, ge=1, le=64)
    fsdp: Fsdp | None = None
    zero: Zero | None = None
    deepspeed: str | None = Field(
        None, min_length=1, max_length=limits.MAX_STRING_CHARS,
        description="A DeepSpeed config JSON, relative to the recipe file: strategy, offload and batch sizes from it")
    accelerate_config: str | None = Field(
        None, min_length=1, max_length=limits.MAX_STRING_CHARS,
        description="An accelerate config YAML (`accelerate config`), relative to the recipe file")

    @model_validator(mode="after")
    def _world(self, info: ValidationInfo) -> Distributed:
        optional = bool(info.context and info.context.get("world_size_optional"))
        if self.world_size is None and self.gpus_per_node is None and not optional:
            named = [f"{key} {value}" for key, value in (("deepspeed", self.deepspeed),
                                                         ("accelerate_config", self.accelerate_config)) if value]
            said = f" ({' and '.join(named)} does not give it)" if named else ""
            raise ValueError(f"give the number of GPUs: world_size, or nodes and gpus_per_node{said}; where the "
                             f"launcher decides it, world_size: {LAUNCHER} (the sharding is then not checked)")
        if self.world_size == LAUNCHER and self.gpus_per_node is not None:
            raise ValueError(f"world_size: {LAUNCHER} leaves the number of GPUs to the launcher, and gpus_per_node "
                             f"{self.gpus_per_node} states it: keep one")
        if isinstance(self.world_size, int) and self.gpus_per_node is not None:
            computed = (self.nodes or 1) * self.gpus_per_node
            if computed != self.world_size:
                raise ValueError(f"world_size {self.world_size} is not nodes x gpus_per_node = {computed}: "
                                 "give one or the other")
        if self.fsdp is not None and self.strategy != "fsdp":
            raise ValueError(f"an fsdp section configures strategy 'fsdp', not '{self.strategy}': remove it, "
                             "or use strategy: fsdp")
        if self.zero is not None and not self.strategy.startswith("zero"):
            raise ValueError(f"a zero section configures DeepSpeed's ZeRO stages, not '{self.strategy}': remove it, "
                             "or use strategy: zero1, zero2 or zero3")
        if self.zero is not None and self.zero.offload_param != "none" and self.strategy != "zero3":
            raise ValueError(f"offload_param needs ZeRO stage 3 (DeepSpeed partitions parameters only there), "
                             f"not {self.strategy}: use strategy: zero3, or offload_param: none")
        return self

    @property
    def size_known(self) -> bool:
        """Whether the number of GPUs is stated (not where it is the launcher's; see RC111)."""
        return isinstance(self.world_size, int) or self.gpus_per_node is not None

    @property
    def size(self) -> int:
        """The number of ranks (GPUs) in all (1 where it is not stated: see size_known)."""
        if isinstance(self.world_size, int):
            return self.world_size
        return (self.nodes or 1) * (self.gpus_per_node or 1)

    @property
    def node_count(self) -> int:
        """The nodes (hosts) the ranks run on."""
        if self.nodes is not None:
            return self.nodes
        if self.gpus_per_node is not None and isinstance(self.world_size, int):
            return max(1, self.world_size // self.gpus_per_node)
        return 1

    @property
    def shards_parameters(self) -> bool:
        """Whether each rank holds only a shard of the (frozen and trained) parameters: FSDP and ZeRO-3."""
        return self.strategy in ("fsdp", "zero3")


class Hardware(_Section):
    gpu: _Names = Field(default_factory=list, description="One GPU name or a list: the GPUs this recipe is for")
    vram_budget_gib: float | None = Field(None, gt=0, le=4096)
    host_memory_gib: float | None = Field(
        None, gt=0, le=1_048_576, description="CPU memory of one node: what ZeRO and FSDP offload can use")

    @field_validator("gpu", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value == []:
            raise ValueError("an empty list names no GPU: name one (rtx4090) or remove the key")
        return [value] if isinstance(value, str) else value


class Expect(_Section):
    tokens_per_second: float | None = Field(None, gt=0, le=limits.MAX_TOKENS_PER_SECOND)


class ChecksSection(_Section):
    ignore: dict[str, str] = Field(default_factory=dict, description="rule id -> the reason it is ignored")

    @field_validator("ignore")
    @classmethod
    def _reasons_given(cls, value: dict[str, str]) -> dict[str, str]:
        for rule_id, reason in value.items():
            if not reason.strip():
                raise ValueError(f"ignoring {rule_id} needs a reason: {{{rule_id}: \"why this recipe is an exception\"}}")
        return value


def _flag_or(*words: str):
    """true, false or one of `words`: a Literal that, unlike pydantic's, refuses 1 and 0 for true and false."""

    def check(value: Any) -> Any:
        if not (isinstance(value, bool) or value in words):
            shown = ", ".join(repr(w) for w in words)
            raise ValueError(f"must be true, false or {shown}")
        return value

    return BeforeValidator(check)


class Unsloth(_Section):
    """Unsloth's FastLanguageModel.from_pretrained and get_peft_model keyword arguments (Unsloth 2026.8.19,
    unsloth/models/loader.py and llama.py; see checks/data/unsloth.yaml), with their defaults. The model itself
    is `model` (id, revision, trust_remote_code); the quantization_config Unsloth is given is `quantization`;
    the LoraConfig arguments get_peft_model passes on (r, lora_alpha, target_modules, ...) are `lora`. Where
    two sections say the same thing differently, RC120 reports it: no section silently wins."""

    # FastLanguageModel.from_pretrained
    max_seq_length: int = Field(2048, ge=1, le=10_000_000)
    dtype: Literal["float16", "bfloat16", "float32"] | None = None  # None: bfloat16 where supported, else float16
    load_in_4bit: bool = True
    load_in_8bit: bool = False
    load_in_16bit: bool = False
    full_finetuning: bool = False
    use_gradient_checkpointing: Annotated[Literal[True, False, "unsloth"], _flag_or("unsloth")] = "unsloth"  # and get_peft_model's
    rope_scaling: dict[str, Annotated[Any, AfterValidator(_plain_value)]] | None = None
    fix_tokenizer: bool = True
    resize_model_vocab: int | None = Field(None, ge=1, le=limits.MAX_INT)
    use_exact_model_name: bool = False
    offload_embedding: bool = False
    float32_mixed_precision: bool | None = None
    fast_inference: bool = False  # vLLM, for generation during RL
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    float8_kv_cache: bool = False
    random_state: int = Field(3407, ge=0, le=limits.MAX_SEED)  # also get_peft_model's
    max_lora_rank: int = Field(64, ge=1, le=4096)
    disable_log_stats: bool = True
    qat_scheme: str | None = Field(None, min_length=1, max_length=100)
    load_in_fp8: Annotated[Literal[True, False, "block"], _flag_or("block")] = False
    unsloth_tiled_mlp: bool = False
    text_only: bool = False
    # get_peft_model's own (its LoraConfig arguments are the `lora` section's)
    finetune_last_n_layers: int | None = Field(None, ge=1, le=limits.MAX_CONFIG_LAYERS)
    ensure_weight_tying: bool = False

    @property
    def checkpointing(self) -> bool:
        """Whether the model trains with gradient checkpointing (Unsloth's offloaded kind or torch's)."""
        return self.use_gradient_checkpointing is not False


class Recipe(_Section):
    model: ModelSpec
    quantization: Quantization | None = None
    lora: Lora | None = None
    unsloth: Unsloth | None = None  # trains with Unsloth (FastLanguageModel); see docs/unsloth.md
    training: Training = Field(default_factory=Training)
    dpo: Dpo | None = None  # a DPO recipe: TRL's DPOTrainer trains it against a reference model
    diffusion: Diffusion | None = None  # a diffusion transformer's recipe (model.component: transformer)
    distributed: Distributed | None = None  # several GPUs: DDP, FSDP2 or ZeRO (docs/distributed.md)
    hardware: Hardware = Field(default_factory=Hardware)
    expect: Expect = Field(default_factory=Expect)
    checks: ChecksSection = Field(default_factory=ChecksSection)

    @field_validator("model", mode="before")
    @classmethod
    def _model_id_shorthand(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value

    @property
    def method(self) -> Method:
        if self.lora is None:
            return Method.FULL
        quantized = self.quantization is not None and (
            self.quantization.load_in_4bit or self.quantization.load_in_8bit
        )
        if quantized:
            return Method.QDORA if self.lora.use_dora else Method.QLORA
        return Method.DORA if self.lora.use_dora else Method.LORA

    @property
    def method_label(self) -> str:
        """The method as a report names it: LoRA on an 8-bit (LLM.int8) base is not QLoRA, which is 4-bit."""
        if self.method in (Method.QLORA, Method.QDORA) and not self.is_4bit:
            return f"{'DoRA' if self.method is Method.QDORA else 'LoRA'} on an 8-bit base"
        return self.method.label

    @property
    def is_4bit(self) -> bool:
        return self.quantization is not None and self.quantization.load_in_4bit

    @property
    def training_dtype(self) -> str:
        if self.training.bf16:
            return "bfloat16"
        if self.training.fp16:
            return "float16"
        return "float32"
