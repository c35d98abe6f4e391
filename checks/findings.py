"""What a rule reports: a Finding with a stable rule id, where it points, what, why and how to fix.

Findings are plain data so that the pytest plugin, the CLI and CI annotations render the same thing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from recipe_checks.shown import shown


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Location:
    """A place in a recipe file: 1-based line and column, with the span of the offending value."""

    path: str
    line: int = 0
    column: int = 0
    end_column: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", shown(str(self.path)))

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}:{self.column}"
        return self.path


@dataclass(frozen=True)
class Finding:
    rule_id: str
    message: str
    location: Location
    severity: Severity = Severity.ERROR
    key: str = ""  # dotted path of the offending key, e.g. "lora.target_modules[0]"
    why: str = ""
    help: str = ""
    check: str = ""  # the check (pytest item) the finding belongs to
    details: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        """Whatever a key, value or path holds is shown escaped (recipe_checks.shown), in every format."""
        for name in ("message", "key"):
            object.__setattr__(self, name, shown(str(getattr(self, name))))
        for name in ("why", "help"):
            object.__setattr__(self, name, shown(str(getattr(self, name)), newlines=True))
        object.__setattr__(self, "details", tuple(shown(str(d)) for d in self.details))

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_dict(self) -> dict:
        return {
            "rule": self.rule_id,
            "severity": self.severity.value,
            "check": self.check,
            "message": self.message,
            "path": self.location.path,
            "line": self.location.line,
            "column": self.location.column,
            "key": self.key,
            "why": self.why,
            "help": self.help,
            "details": list(self.details),
        }
