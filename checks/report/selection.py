"""Which rules a run reports: `--select` and `--ignore` as ruff reads them (ids, names, prefixes).

A selector is a rule id (RC301), a rule name (qlora-paged-optimizer), a prefix of ids (RC3: RC3xx;
RC: all) or ALL. The most specific selector that matches a rule decides; on a tie, --ignore wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recipe_checks.suggest import nearest

_NAME_SPECIFICITY = 1000  # a rule's full name is as specific as its full id


class SelectionError(ValueError):
    """A selector that names no rule: a usage error, with a did-you-mean."""


@dataclass(frozen=True)
class RuleSelection:
    select: tuple[str, ...] = ()  # empty: every rule
    ignore: tuple[str, ...] = ()
    known: tuple[tuple[str, str], ...] = ()  # (id, name) of every rule, for matching names

    @classmethod
    def parse(cls, select: Iterable[str], ignore: Iterable[str], rules: Sequence[type]) -> RuleSelection:
        known = tuple((r.id, r.name) for r in rules)
        return cls(_validated("--select", select, known), _validated("--ignore", ignore, known), known)

    def selects(self, rule_id: str) -> bool:
        name = next((n for i, n in self.known if i == rule_id), "")
        chosen = _specificity(self.select, rule_id, name) if self.select else 0
        dropped = _specificity(self.ignore, rule_id, name)
        return chosen is not None and (dropped is None or chosen > dropped)

    def selected(self, rules: Iterable[type]) -> tuple[type, ...]:
        return tuple(r for r in rules if self.selects(r.id))


def _specificity(selectors: tuple[str, ...], rule_id: str, name: str) -> int | None:
    """How specific the most specific selector matching the rule is (None: none matches)."""
    best: int | None = None
    for selector in selectors:
        if selector == "ALL":
            score = 0
        elif selector.lower() == name:
            score = _NAME_SPECIFICITY
        elif rule_id.startswith(selector):
            score = len(selector) if selector != rule_id else _NAME_SPECIFICITY
        else:
            continue
        best = score if best is None else max(best, score)
    return best


def _validated(flag: str, values: Iterable[str], known: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    selectors: list[str] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            selector = part.lower() if any(part.lower() == n for _, n in known) else part.upper()
            if selector != "ALL" and not any(i.startswith(selector) or n == selector for i, n in known):
                hint = nearest(part, [i for i, _ in known] + [n for _, n in known])
                suggestion = f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
                raise SelectionError(
                    f"{flag} {part}: no rule has this id, name or id prefix{suggestion} "
                    "(`recipe-checks explain` lists the rules)"
                )
            selectors.append(selector)
    return tuple(selectors)
