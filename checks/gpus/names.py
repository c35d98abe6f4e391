"""How GPU names resolve: exact spellings, unique prefixes, ambiguous names, and which cards a
misspelt name may suggest (the same series, model number, variant and memory size, never another card).

See docs/gpus.md for the rules with examples.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from recipe_checks.suggest import normalize_name

_SEPARATORS = re.compile(r"[\s_\-]")
_VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct", "intel"})
# Form factors and memory technologies name a package of the same chip, not another card: h100 sxm5, hbm3.
_FORM_FACTORS = frozenset({"sxm", "pcie", "pci", "hbm", "nvl", "mxm"})


def boundary_prefixes(spelling: str) -> set[str]:
    """The normalized prefixes of a spelling that end where the spelling has a separator:
    'rtx3060-12gb' -> {'rtx3060'}, 'a100 sxm4 40gb' -> {'a100', 'a100sxm4'}. Only those that name a
    model number (contain a digit) can stand for the whole name."""
    out = set()
    for match in _SEPARATORS.finditer(spelling.strip()):
        prefix = normalize_name(spelling[: match.start()])
        if prefix and any(c.isdigit() for c in prefix):
            out.add(prefix)
    return out


@dataclass(frozen=True)
class CardName:
    """A GPU name read as its parts: 'GeForce RTX 4060 Ti 16GB' is series 'rtx', number '4060',
    variant 'ti', 16 GB."""

    series: str  # the letters before the model number, vendor words left out ('rtx', 'a', 'rtxa', '')
    number: str  # the model number ('4090', '100')
    variant: str  # letters after it, form factors left out ('ti', 's', 'g', '')
    memory_gb: int | None  # a size written in the name ('16gb'), else None


def parse_card_name(name: str) -> CardName | None:
    """The parts of a GPU name; None for a name without a model number."""
    tokens: list[str] = []
    for word in _SEPARATORS.split(name.lower()):
        parts = re.findall(r"[a-z]+|\d+", word)
        for i, part in enumerate(parts):
            # a form factor and its generation written on to it ('sxm4', 'hbm3'): left out
            if part in _FORM_FACTORS or (part.isdigit() and i > 0 and parts[i - 1] in _FORM_FACTORS):
                continue
            if part not in _VENDOR_WORDS:
                tokens.append(part)
    first = next((i for i, t in enumerate(tokens) if t.isdigit()), None)
    if first is None:
        return None
    variant, memory = "", None
    rest = tokens[first + 1:]
    i = 0
    while i < len(rest):
        if rest[i].isdigit() and i + 1 < len(rest) and rest[i + 1] == "gb":
            memory, i = int(rest[i]), i + 2
        else:
            variant, i = variant + rest[i], i + 1
    return CardName("".join(tokens[:first]), tokens[first], variant, memory)


def _one_edit_apart(a: str, b: str) -> bool:
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def same_card_family(written: CardName, candidate: CardName, candidate_memory_gb: float) -> bool:
    """Whether a candidate spelling could be what a misspelt name meant: the same series (one letter off
    for a series of three or more letters: 'rtz'), the same model number but for its last digit
    (rtx4099 -> rtx4090, never rtx5080 -> rtx5090, rtx3060 -> rtx4060 or v100 -> p100), the same variant
    (never 4060 Ti -> 4060), and the memory size the name states, if it states one."""
    if written.series != candidate.series and not (
            len(written.series) >= 3 and _one_edit_apart(written.series, candidate.series)):
        return False
    a, b = written.number, candidate.number
    if len(a) != len(b) or a[:-1] != b[:-1]:
        return False
    if written.variant != candidate.variant:
        return False
    return written.memory_gb is None or round(candidate_memory_gb) == written.memory_gb


def related_suggestions(name: str, spellings: Iterable[tuple[str, str, float]], n: int = 3) -> list[str]:
    """Profile keys a misspelt name may suggest, nearest first: `spellings` is (spelling, profile key,
    the profile's memory in GB) for every key and alias; only cards of the same family are offered."""
    written = parse_card_name(name)
    if written is None:
        return []
    target = normalize_name(name)
    scored: dict[str, float] = {}
    for spelling, key, memory_gb in spellings:
        candidate = parse_card_name(spelling)
        if candidate is None or not same_card_family(written, candidate, memory_gb):
            continue
        ratio = difflib.SequenceMatcher(None, target, normalize_name(spelling)).ratio()
        scored[key] = max(scored.get(key, 0.0), ratio)
    return sorted(scored, key=lambda k: (-scored[k], k))[:n]
