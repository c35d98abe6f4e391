"""Text that came from a recipe or another file (a key, a value, a path, a library's message) as recipe-checks
shows it: one line of printable text whatever the input holds.

Findings reach terminals, pytest's failure text, CI logs (where GitHub Actions reads any line that starts
with `::` as a workflow command: `::stop-commands::`, `::add-mask::`), SARIF and JSON files and the job
summary. A newline or carriage return in a key would start such a line; an ESC drives the terminal; a lone
surrogate (a legal YAML escape, or a file name that is not UTF-8) cannot be encoded and used to crash the
whole report. Every Finding and Location passes its text through `shown` (checks/findings.py), so each
format gets it escaped, once.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, Unicode's line and paragraph separators, and surrogates (always lone in a str)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_KEEPING_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def shown(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character, line separator and surrogate written as its escape (`\\n`, `\\x1b`,
    `\\ud800`). `newlines`: keep "\\n" (prose that the formats wrap or escape themselves: why and help)."""
    return (_UNSAFE_KEEPING_NEWLINES if newlines else _UNSAFE).sub(_escape, text)
