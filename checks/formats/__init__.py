"""Other tools' configs (Axolotl, LLaMA-Factory, TRL) recognised by their keys and translated into the
recipe model, with every native key pointing at the line of the original key it came from.

A translation is a `LoadedRecipe` like any other: `data` is the native recipe, the spans are the original
file's, `text` is the original text (so excerpts show the user's own line), and `translation` keeps what
the translation could not say in the native recipe: keys it did not understand, keys it understood but
cannot check, values it resolved, and `bf16: auto`, which is resolved per target GPU (`for_gpu`).
Only dictionaries are touched here: no library is imported, so collection stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from recipe_checks.recipe.load import PYYAML, KeyPath, LoadedRecipe, load_text

if TYPE_CHECKING:
    from recipe_checks.findings import Finding
    from recipe_checks.gpus import GpuProfile
    from recipe_checks.recipe.schema import Recipe

FORMATS = ("axolotl", "llamafactory", "trl")
# The note a translation leaves where a config shards across GPUs without saying how many (RC111 reports it;
# dropped where the DeepSpeed config's batch sizes give the number)
GPUS_NOT_STATED = "the number of GPUs is not stated (the launcher is told it): the sharding is checked without a world size"


def gpus_not_stated(how: str) -> str:
    return f"{GPUS_NOT_STATED}; {how}"
CHOICES = ("auto", "native", *FORMATS)
LABELS = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory", "trl": "TRL", "native": "recipe-checks"}


@dataclass
class Translation:
    """What a translation found besides the native recipe: the notes its rules (RC110-RC113) report."""

    format: str
    source: str  # the tool version / schema the mapping follows
    origins: dict[KeyPath, KeyPath] = field(default_factory=dict)  # native path -> original path
    # native section -> an original key of it: where a finding about a key left to its default points
    sections: dict[KeyPath, KeyPath] = field(default_factory=dict)
    untranslated: list[KeyPath] = field(default_factory=list)  # original keys not understood
    # the original top-level keys that have a value, as the tool reads them (RC110 looks for removed TrainingArguments)
    written: dict[str, Any] = field(default_factory=dict)
    not_checked: list[tuple[KeyPath, str]] = field(default_factory=list)  # original key, what is not checked
    resolved: list[tuple[KeyPath, str]] = field(default_factory=list)  # original key, the value it resolved to
    bf16_auto: KeyPath | None = None  # the original `bf16: auto`, resolved against each target GPU
    fp16_written: bool = False  # the config sets fp16 itself: auto's fallback does not override it
    fp16_written_value: bool = False
    precision_follows: tuple[KeyPath, ...] = ()  # native keys that follow the training precision
    trainer: str = "sft"  # the tool's trainer the config is for (TRL's dpo, grpo, ...; LLaMA-Factory's stage)
    # why the training step is not traced nor run (None: it is): a trainer the recipe model has no step for (GRPO,
    # KTO, a reward model, PPO). The traced and run checks say "not checked" with it, never judging a supervised
    # step in its place; RC111 names the trainer at its key.
    untraced: str | None = None
    # an adapter method the recipe model has not (LLaMA-Factory's OFT): the config trains adapters, so the rules that
    # read a recipe without a `lora` section as a full fine-tune (RC501) do not judge it
    other_adapter: str | None = None

    @property
    def label(self) -> str:
        return LABELS[self.format]

    def written_key(self, key_path: KeyPath) -> str | None:
        """The key as the original file writes it, for a native key path (its longest translated prefix)."""
        probe = tuple(key_path)
        while probe:
            original = self.origins.get(probe)
            if original is not None:
                return _dotted((*original, *key_path[len(probe):]))
            probe = probe[:-1]
        return None

    def overrides_for(self, gpu: GpuProfile | None) -> dict[KeyPath, Any]:
        """The native values that `bf16: auto` changes on `gpu`: none where the GPU has bf16; else bf16 off
        and fp16 on unless the config sets fp16 (Axolotl's normalize_config, run on the local GPU), and the
        keys that follow the precision (cfg.torch_dtype: the model's dtype, the 4-bit compute dtype)."""
        if self.bf16_auto is None or gpu is None or gpu.supports_bf16:
            return {}
        fp16 = self.fp16_written_value if self.fp16_written else True
        dtype = "float16" if fp16 else "float32"
        return {("training", "bf16"): False, ("training", "fp16"): fp16, **{path: dtype for path in self.precision_follows}}

    def for_gpu(self, recipe: Recipe, gpu: GpuProfile | None) -> Recipe:
        """The validated recipe as the tool would run it on `gpu` (see overrides_for)."""
        sections: dict[str, dict[str, Any]] = {}
        for (section, key), value in self.overrides_for(gpu).items():
            sections.setdefault(section, {})[key] = value
        update = {name: getattr(recipe, name).model_copy(update=values) for name, values in sections.items()
                  if getattr(recipe, name) is not None}
        return recipe.model_copy(update=update) if update else recipe


@dataclass
class Builder:
    """Writes a native recipe from a foreign mapping, remembering where each native key came from."""

    data: dict[str, Any]
    translation: Translation
    used: set[str] = field(default_factory=set)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def take(self, key: str) -> Any:
        """The value of a key the translation understands (None: absent or null)."""
        self.used.add(key)
        return self.data.get(key)

    def ignore(self, keys: Iterable[str]) -> None:
        """Keys understood and irrelevant to a training step's memory and correctness (logging, data, output)."""
        self.used.update(keys)

    def not_checked(self, key: str, why: str, *, when: Callable[[Any], bool] = bool) -> None:
        self.used.add(key)
        value = self.data.get(key)
        if value is not None and when(value):
            self.translation.not_checked.append(((key,), why))

    def resolved(self, key: str, what: str) -> None:
        self.translation.resolved.append(((key,), what))


class NativeRecipe:
    """The native mapping under construction, with the origin of each key."""

    def __init__(self, translation: Translation) -> None:
        self.data: dict[str, Any] = {}
        self.translation = translation

    def set(self, path: KeyPath, value: Any, origin: str | KeyPath | None = None) -> None:
        node = self.data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        if origin is not None:
            self.translation.origins[tuple(path)] = (origin,) if isinstance(origin, str) else tuple(origin)

    def copy(self, b: Builder, path: KeyPath, key: str, default: Any = None) -> None:
        """The config's `key` (or the tool's `default` where it is absent) as the native `path`."""
        value = b.take(key)
        if value is not None:
            self.set(path, value, key)
        elif default is not None:
            self.set(path, default)

    def copy_section(self, b: Builder, section: str, keys: dict[str, str] | Iterable[str]) -> None:
        """Keys the tool passes on to the library with the same meaning (`keys`: tool key -> library key)."""
        for key in keys:
            self.copy(b, (section, keys[key] if isinstance(keys, dict) else key), key)

    def warmup_ratio(self, b: Builder) -> None:
        """warmup_ratio as warmup_steps: transformers 5 has no warmup_ratio and reads warmup_steps below 1
        as a fraction of the run."""
        if b.take("warmup_ratio") is not None and not b.has("warmup_steps"):
            self.set(("training", "warmup_steps"), b.data["warmup_ratio"], "warmup_ratio")

    def section_origin(self, section: str, *candidates: str, b: Builder | None = None) -> None:
        """Where a finding about a section key the config leaves to its default points: the first of the
        candidate keys of that section the config sets (with `b`), else the first candidate."""
        origin = next((k for k in candidates if b is None or b.has(k)), None)
        if origin is not None:
            self.translation.sections.setdefault((section,), (origin,))


def translation_of(state: Any) -> Translation | None:
    """The translation a RecipeState's file was read through (None: a native recipe, or no recipe)."""
    return state.loaded.translation if state.loaded is not None else None


# The checks that trace or run the training step (and the throughput ceiling, a step's FLOPs): what a config whose
# trainer has no step in the recipe model cannot be checked by
STEP_CHECKS = frozenset({"throughput", "vram", "cpu-step", "cpu-train", "gpu-step", "gpu-train"})


def untraced_step(state: Any, check: str) -> str | None:
    """Why `check` does not run on a RecipeState's file: its trainer's step is not modelled (None: it runs)."""
    translation = translation_of(state)
    if check not in STEP_CHECKS or translation is None or translation.untraced is None:
        return None
    return f"not checked: {state.path} {translation.untraced}, and one supervised step would be no verdict on it"


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- recognition ------------------------------------------------------------------------------------

def _signatures() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Per format: the keys one of which it must have, and the keys only it speaks (one more is needed)."""
    from recipe_checks.formats import axolotl, llamafactory, trl

    return {name: (module.REQUIRED, module.SIGNATURE) for name, module in
            (("axolotl", axolotl), ("llamafactory", llamafactory), ("trl", trl))}


def detect(keys: Iterable[str]) -> str | None:
    """The format whose config these top-level keys are: `native` where there is a `model` key (as before),
    a tool where its required key and at least one key only it speaks are there, else None."""
    keys = {k for k in keys if isinstance(k, str)}
    if "model" in keys:
        return "native"
    scores = {}
    for name, (required, signature) in _signatures().items():
        if keys & required and keys & signature:
            scores[name] = len(keys & signature)
    if not scores:
        return None
    return max(scores, key=lambda n: (scores[n], -FORMATS.index(n)))


def lookalike(keys: Iterable[str]) -> tuple[str, list[str]] | None:
    """A tool whose vocabulary a config speaks (three keys or more) without being recognised as its config:
    the tool and the keys it shares, in the file's order."""
    keys = [k for k in keys if isinstance(k, str)]
    best = None
    for name, (required, signature) in _signatures().items():
        shared = [k for k in keys if k in signature | required]  # in the file's order
        if len(shared) >= 3 and (best is None or len(shared) > len(best[1])):
            best = (name, shared)
    return best


def translate(loaded: LoadedRecipe, fmt: str) -> LoadedRecipe:
    """The native LoadedRecipe of a foreign config: native data, the original spans and text."""
    from recipe_checks.formats import axolotl, llamafactory, trl

    module = {"axolotl": axolotl, "llamafactory": llamafactory, "trl": trl}[fmt]
    loaded = as_the_tool_reads(loaded, module)
    translation = Translation(format=fmt, source=module.SOURCE,
                              written={k: v for k, v in loaded.data.items() if isinstance(k, str) and v is not None})
    builder = Builder(loaded.data, translation)
    native = NativeRecipe(translation)
    module.translate(builder, native)
    for key, value in loaded.data.items():
        if key not in builder.used and value is not None:
            translation.untranslated.append((key,))
    return _with_spans(loaded, native.data, translation)


def as_the_tool_reads(loaded: LoadedRecipe, module: Any) -> LoadedRecipe:
    """The config's values as its tool reads them, numbers above all. First the YAML, through the loader the tool
    uses (the format module's YAML_READING: LLaMA-Factory's OmegaConf reads `2e-5` as a float, PyYAML as a string);
    then the conversions its argument parser makes (PARSED_TYPES: TRL's argparse converts a string with the type of
    its dataclass field, float('2e-5')). A string the tool cannot convert stays a string: RC103 reports it, as the
    tool would fail on it. Safe loading and the limits on input are the same for every format."""
    reading = getattr(module, "YAML_READING", PYYAML)
    if reading != PYYAML:
        loaded = load_text(loaded.text, loaded.path, reading)
    types = getattr(module, "PARSED_TYPES", {})
    converted = {}
    for key, value in loaded.data.items():
        if isinstance(value, str) and key in types:
            try:
                converted[key] = types[key](value)
            except ValueError:
                pass
    return replace(loaded, data={**loaded.data, **converted}) if converted else loaded


def _with_spans(loaded: LoadedRecipe, data: dict[str, Any], translation: Translation) -> LoadedRecipe:
    """Each native path gets the spans of the original path it came from (and of its items, for lists);
    original paths keep their own spans where no native path is the same tuple (duplicate keys, RC108)."""
    key_spans = dict(loaded.key_spans)
    value_spans = dict(loaded.value_spans)
    origins = {**translation.sections, **translation.origins}
    for native_path, original in sorted(origins.items(), key=lambda kv: len(kv[0])):
        for table, source in ((key_spans, loaded.key_spans), (value_spans, loaded.value_spans)):
            for path, span in source.items():
                if path[:len(original)] == original:
                    table[(*native_path, *path[len(original):])] = span
    for path in list(key_spans):  # the top level of the native recipe starts at the file's first line
        if path == ():
            del key_spans[path]
    return replace(loaded, data=data, key_spans=key_spans, value_spans=value_spans, translation=translation)


def as_native(loaded: LoadedRecipe, forced: str | None = None) -> tuple[LoadedRecipe, str]:
    """The loaded file as a native recipe, and the format it was read as (`native`, a tool, or `unknown`)."""
    fmt = forced if forced not in (None, "auto") else detect(loaded.data)
    if fmt in FORMATS:
        return translate(loaded, fmt), fmt
    return loaded, fmt or "unknown"


def read_as_native(loaded: LoadedRecipe, forced: str | None = None) -> tuple[LoadedRecipe | None, Any]:
    """What RecipeState holds for a loaded file: the native recipe (translated where the file is another
    tool's config), or no recipe and the RC112 finding of a config that looks like a tool's and is not
    recognised. A translation never raises: a failure is that finding too."""
    from recipe_checks.findings import Finding

    if forced in (None, "auto"):
        note = other_kind_note(loaded)
        if note is not None:
            return None, note
    fmt = forced if forced not in (None, "auto") else detect(loaded.data)
    if fmt == "native":
        return loaded, None
    if fmt in FORMATS:
        try:
            return translate(loaded, fmt), None
        except Exception as exc:  # an input the translation did not foresee: reported, never a crash
            return None, Finding(
                "RC112", f"cannot read the file as a {LABELS[fmt]} config: {type(exc).__name__}: {str(exc)[:200]}",
                loaded.location(()), check="schema", key="",
                why="a config that cannot be translated cannot be checked",
                help="check the file against the tool's documented keys, or pass --recipes-format=native",
            )
    look = lookalike(loaded.data)
    if look is None:
        return loaded, None  # not another tool's config either: checked as a native recipe, which says why not
    tool, shared = look
    from recipe_checks.formats import axolotl, llamafactory, trl

    required = {"axolotl": axolotl, "llamafactory": llamafactory, "trl": trl}[tool].REQUIRED
    return None, Finding(
        "RC112",
        f"this looks like {'an' if LABELS[tool][0] in 'AEIOU' else 'a'} {LABELS[tool]} config (keys {', '.join(shared[:6])}) but has no "
        f"{' or '.join(sorted(required))}: it is not recognised as one, nor as a recipe",
        loaded.location((shared[0],), at_value=False), check="schema", key=shared[0],
        why="a config that is not recognised would be checked as nothing at all",
        help=f"add {' or '.join(sorted(required))} (the model), or force the format with "
             f"--recipes-format={tool}; a native recipe starts with 'model:'",
    )


def other_kind_note(loaded: LoadedRecipe) -> Finding | None:
    """The one RC112 note of a file that is a config of another kind, no recipe (recipe_checks.formats.kinds): what
    it is, the keys that say so, and how it is checked instead. An info for a launcher's file (accelerate,
    DeepSpeed: checked through the recipe that names it), a warning for a training config recipe-checks does not
    read yet (its run is not checked); never an error, as nothing is wrong with the file. None: no such kind."""
    from recipe_checks.findings import Finding, Severity
    from recipe_checks.formats.kinds import classify

    kind = classify(loaded.data)
    if kind is None:
        return None
    first = tuple(kind.evidence[0].split("."))
    shown_keys = ", ".join(kind.evidence[:4]) + (", ..." if len(kind.evidence) > 4 else "")
    return Finding(
        "RC112", f"{kind.description} ({shown_keys}): {kind.verdict}", loaded.location(first, at_value=False),
        severity=Severity.WARNING if kind.not_checked else Severity.INFO, check="schema", key=kind.evidence[0],
        why="a file that is not a recipe would otherwise be checked as one: every key of it reported unknown",
        help=kind.help,
    )
