"""The Rule base class: a stable id, the check it belongs to, its documentation, and `run`.

A rule's docstring is its documentation (What it checks / Why it matters / Example / Use instead),
printed by `recipe-checks explain RULE`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from recipe_checks.findings import Finding, Severity
from recipe_checks.recipe.load import KeyPath

if TYPE_CHECKING:
    from recipe_checks.context import RecipeContext


class Rule:
    id: ClassVar[str]
    name: ClassVar[str]  # kebab-case, e.g. "qlora-needs-paged-optimizer"
    check: ClassVar[str]  # the pytest item it reports under, e.g. "optimizer"
    severity: ClassVar[Severity] = Severity.ERROR
    why: ClassVar[str]  # one line: why it matters
    # What the rule needs besides a valid recipe: "gpu" (a known target profile), "model" (the meta model).
    needs: ClassVar[frozenset[str]] = frozenset()
    # The recipe sections the rule reads: it runs while those validate, whatever else is wrong in the
    # recipe (a typo in `lora` does not stop the precision rules). Empty: it reads the raw file only.
    reads: ClassVar[frozenset[str]] = frozenset()
    # Whether an error of this rule means the step cannot be built or started as written (a library raises: peft on
    # a target, TrainingArguments on an optimizer name, BitsAndBytesConfig on a setting), so that it may be why a
    # trace or a real step failed. A policy rule (a non-paged optimizer, bf16 on a target GPU without it) is not:
    # it changes nothing the step builds, and a failed step is never blamed on it.
    stops_the_step: ClassVar[bool] = False

    def run(self, ctx: RecipeContext) -> Iterable[Finding]:
        raise NotImplementedError

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    def finding(
        self,
        ctx: RecipeContext,
        message: str,
        key_path: KeyPath = (),
        *,
        help: str,
        why: str | None = None,
        severity: Severity | None = None,
        at_value: bool = True,
        details: Iterable[str] = (),
    ) -> Finding:
        key = ctx.loaded.written_key(key_path) or _dotted(key_path)  # as written, in another tool's config
        return Finding(
            rule_id=self.id,
            message=message,
            location=ctx.loaded.location(key_path, at_value=at_value),
            severity=severity or self.severity,
            key=key,
            why=why if why is not None else self.why,
            help=help,
            check=self.check,
            details=tuple(details),
        )


def _dotted(key_path: KeyPath) -> str:
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class CannotJudge(Exception):
    """Raised by a rule that cannot reach a verdict on this input (e.g. the step does not trace).

    Carries the finding that says why. The engine reports it, unless other checks' errors already
    explain it: then the check is skipped, naming them, so one cause is reported once.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


class NotRun(Exception):
    """Raised by a rule with nothing to judge on this machine (e.g. no tiny-random model of the
    architecture): the check is skipped with this reason, which says what is needed."""
