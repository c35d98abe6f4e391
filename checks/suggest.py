"""Did-you-mean: the nearest known names to a misspelt one."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def normalize_name(name: str) -> str:
    """Fold case and separators: 'RTX 4090', 'rtx-4090' and 'rtx_4090' all read 'rtx4090'."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def nearest(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    known = list(known)
    by_norm = {normalize_name(k): k for k in known}
    hits = difflib.get_close_matches(normalize_name(name), list(by_norm), n=n, cutoff=cutoff)
    return [by_norm[h] for h in hits]


def did_you_mean(name: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    hits = nearest(name, known, cutoff=cutoff)
    if not hits:
        return ""
    return "did you mean " + " or ".join(f"'{h}'" for h in hits) + "?"
