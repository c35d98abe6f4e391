"""Progress of long runs for a person watching a terminal: the recipes `check` goes through, the fixes
`estimate` traces, the candidates `init` traces. Nothing at all when stderr is not a terminal (CI logs,
pipes) or the user asked for quiet.

The code that does the work calls `tick(label)` at each unit of work; a command that wants a bar opens
one with `bar(...)` around the work. With no bar open, `tick` does nothing, so library code and tests
pay nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator

_LISTENER: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("progress", default=None)


def wanted(*, quiet: bool = False) -> bool:
    """Whether a progress bar helps: someone watches stderr (a terminal) and did not ask for quiet."""
    return not quiet and sys.stderr.isatty()


def tick(label: str) -> None:
    """One unit of work starts (a fix traced, a candidate traced): the open bar, if any, moves on."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(label)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Call `listener(label)` at each tick inside the block."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextlib.contextmanager
def bar(description: str, *, unit: str, enabled: bool) -> Iterator[None]:
    """A tqdm bar on stderr that moves at each tick inside the block and is gone when it ends; `enabled`
    False (see `wanted`): nothing is drawn."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    progress = tqdm(desc=description, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def moved(label: str) -> None:
        progress.set_postfix_str(label[:40], refresh=False)
        progress.update(1)

    try:
        with listening(moved):
            yield
    finally:
        progress.close()
