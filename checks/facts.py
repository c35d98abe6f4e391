"""Source-backed facts the precision rules use, loaded from data/precision_facts.yaml."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

FACTS_FILE = Path(__file__).parent / "data" / "precision_facts.yaml"


@functools.cache
def precision_facts() -> dict[str, Any]:
    return yaml.safe_load(FACTS_FILE.read_text(encoding="utf-8"))


def min_cc(section: str, entry: str) -> tuple[int, int]:
    major, minor = str(precision_facts()[section][entry]["min_compute_capability"]).split(".")
    return int(major), int(minor)


def first_source(section: str, entry: str | None = None) -> str:
    """The first source URL of a facts entry (or of a flat section when `entry` is None)."""
    node = precision_facts()[section]
    sources = (node[entry] if entry else node).get("sources") or []
    return sources[0] if sources else ""
