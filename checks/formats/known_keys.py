"""The keys each tool's config accepts and the TrainingArguments transformers removed, so a key a translation does
not understand is told apart: removed by transformers, valid for its tool but not modelled, or unknown to the tool.

The tools' own keys are data (checks/data/tool_keys.yaml, written by checks/data/gather_tool_keys.py from Axolotl's
pydantic schema, LLaMA-Factory's hparams dataclasses and TRL's configs, at the commits it names); the fields of
TrainingArguments a tool passes its other keys to are read from the installed transformers when first asked for.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent.parent / "data"
TOOL_KEYS_FILE = DATA / "tool_keys.yaml"
REMOVED_FILE = DATA / "training_args_removed.yaml"
_PASSES_TO = ("TrainingArguments", "Seq2SeqTrainingArguments")


@dataclass(frozen=True)
class RemovedArgument:
    """A TrainingArguments field transformers removed, and what replaces it (checks/data/training_args_removed.yaml)."""

    key: str
    use: str  # a field (rename: the same value under that name) or a sentence
    rename: bool
    note: str
    removed_in: str

    def advice(self, value: Any = None, *, note: bool = True) -> str:
        """'use warmup_steps: 0.1 (warmup_steps takes a float: ...)', with the written value where it carries over."""
        use = f"{self.use}: {_yaml_scalar(value)}" if self.rename and _is_scalar(value) else self.use
        return f"use {use}" + (f" ({self.note})" if note and self.note else "")

    def says(self, value: Any = None, *, note: bool = True) -> str:
        return f"removed in transformers {self.removed_in}: {self.advice(value, note=note)}"


@dataclass(frozen=True)
class ToolKeys:
    """The top-level keys a tool's config accepts: its own (from its source) and the transformers class it passes
    the others to, read from the installed transformers."""

    format: str
    source: str
    short: str  # "TRL 1.16.0's configs": the source in a few words, for a message
    own: frozenset[str]
    passes_to: str | None
    keys: frozenset[str]


@dataclass
class UntranslatedKeys:
    """A translation's untranslated keys (and the removed TrainingArguments it translated anyway), split three ways."""

    removed: list[tuple[tuple[str], RemovedArgument]] = field(default_factory=list)
    not_modelled: list[tuple[str]] = field(default_factory=list)  # valid for the tool; the translation lacks them
    unknown: list[tuple[tuple[str], list[str]]] = field(default_factory=list)  # with the nearest keys of the tool


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


@functools.cache
def _removed_data() -> dict[str, RemovedArgument]:
    data = yaml.safe_load(REMOVED_FILE.read_text(encoding="utf-8"))
    out = {}
    for entry in data["removed"]:
        item = RemovedArgument(key=str(entry["key"]), use=str(entry["use"]), rename=bool(entry["rename"]),
                               note=str(entry.get("note") or ""), removed_in=str(entry["removed_in"]))
        out[item.key] = item
    return out


@functools.cache
def _training_fields(cls_name: str) -> frozenset[str]:
    import transformers

    return frozenset(f.name for f in dataclasses.fields(getattr(transformers, cls_name)) if f.init)


@functools.cache
def removed_training_arguments() -> dict[str, RemovedArgument]:
    """The removed fields the installed TrainingArguments indeed lacks (a field it has again is no longer removed)."""
    present = _training_fields("TrainingArguments")
    return {key: item for key, item in _removed_data().items() if key not in present}


def removed_training_argument(key: str) -> RemovedArgument | None:
    return removed_training_arguments().get(key)


@functools.cache
def tool_keys(fmt: str) -> ToolKeys:
    data = yaml.safe_load(TOOL_KEYS_FILE.read_text(encoding="utf-8"))[fmt]
    own = frozenset(key for group in ("classes", "plugin_classes") for cls in (data.get(group) or {}).values()
                    for key in cls["keys"])
    passes_to = data.get("passes_to")
    if passes_to is not None and passes_to not in _PASSES_TO:
        raise ValueError(f"{TOOL_KEYS_FILE}: {fmt}.passes_to is {passes_to!r}, not one of {_PASSES_TO}")
    keys = own | (_training_fields(passes_to) if passes_to else frozenset())
    short = str(data["short"])
    if passes_to:
        import transformers

        short += f" and transformers {transformers.__version__}'s {passes_to}"
    return ToolKeys(format=fmt, source=str(data["source"]), short=short, own=own, passes_to=passes_to, keys=keys)


def split_untranslated(fmt: str, untranslated: Iterable[tuple], written: Mapping[str, Any]) -> UntranslatedKeys:
    """The untranslated top-level keys of a `fmt` config, and the keys it writes (`written`, with values) that
    transformers removed from the TrainingArguments the tool passes them to, even where the translation read them
    (TRL's and LLaMA-Factory's `warmup_ratio`: translated as warmup_steps, refused by the tool on transformers 5)."""
    from recipe_checks.suggest import nearest

    known = tool_keys(fmt)
    out = UntranslatedKeys()
    removed_keys: set[str] = set()
    if known.passes_to is not None:
        for key in written:
            item = removed_training_argument(key) if isinstance(key, str) and key not in known.own else None
            if item is not None:
                out.removed.append(((key,), item))
                removed_keys.add(key)
    for path in untranslated:
        key = path[-1]
        if key in removed_keys:
            continue
        if key in known.keys:
            out.not_modelled.append(path)
        else:
            out.unknown.append((path, nearest(str(key), known.keys, cutoff=0.75)))
    return out
