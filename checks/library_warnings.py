"""Which library warnings are noise and which say a result may be wrong: `quiet()` hides the listed noise
only, and a real step fails on a warning that its result may be silently incorrect (RC701).

transformers, peft, bitsandbytes and TRL warn with advice meant for a real run (deprecations, "set
use_cache=False", slow-inference hints): a check builds dozens of models and would print it every time.
A warning that a computation may be silently incorrect is another matter: the verdict built on that
computation cannot be trusted, so it is never hidden. Anything neither listed as noise nor a correctness
warning passes through to the caller's filters (pytest's warnings summary, the CLI's stderr).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings

# A library's own words for "this result may be wrong", as torch, transformers and bitsandbytes say it.
SILENTLY_INCORRECT = re.compile(
    r"silently incorrect|silently wrong|incorrect results?|wrong results?|may be incorrect|numerically incorrect",
    re.IGNORECASE,
)

# (category, message pattern, why it is noise): what a check run hides. Each entry is a warning seen in a
# check run whose advice is for the user's real training run, never about the result the check reads.
NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"^`(is_)?gradient_checkpointing(_enable|_disable|_kwargs)?` is deprecated",
     "transformers 5.24 renames gradient to activation checkpointing; peft and TRL still call the old names, "
     "and recipe-checks reads both (compat.activation_checkpointing)"),
    (UserWarning, r"^Paged optimizers are not supported on CPU",
     "bitsandbytes on the CPU stand-in; the target GPU pages (RC301 judges the optimizer)"),
    (UserWarning, r"^Mismatch dtype between input and weight: .* Cannot dispatch to fused implementation",
     "torch's CPU layer norm choosing its unfused kernel: speed on this machine, same result"),
    (UserWarning, r"^FSDP2-wrapped module \(\w+\) returned a view tensor",
     "advice to code that changes the output in place; the traced step does not"),
)

_LOGGERS = ("transformers", "peft", "bitsandbytes", "trl", "accelerate", "diffusers")


class SilentlyIncorrect(Exception):
    """A library warned, during a real step, that a result it computed may be silently incorrect."""

    help = ("this is no setting of the recipe: the library computed part of the real step on a path it warns "
            "about on this machine, so no verdict rests on it; install library versions in the supported range "
            "(the report header lists the installed ones) and report the message to recipe-checks")

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("; ".join(messages))

    def finding_message(self, what: str) -> str:
        from recipe_checks.limits import shorten

        return f"{what} cannot be judged: a library warned that its result may be silently incorrect: {shorten(str(self), 300)}"


def says_silently_incorrect(message: Warning | str) -> bool:
    return bool(SILENTLY_INCORRECT.search(str(message)))


def is_noise(w: warnings.WarningMessage) -> bool:
    if says_silently_incorrect(w.message):
        return False
    text = str(w.message)
    return any(issubclass(w.category, category) and re.search(pattern, text) for category, pattern, _ in NOISE)


def _reemit(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


class _LibraryLog(logging.Handler):
    """Stands in for a library logger's handlers while quiet: drops its records, except one saying a result
    may be silently incorrect, which becomes a RuntimeWarning (so a real step sees it as it sees torch's)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001  a malformed log call in a library is not ours to raise
            return
        if says_silently_incorrect(text):
            warnings.warn(f"{record.name}: {text}", RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def _library_logs_captured():
    handler = _LibraryLog(logging.WARNING)
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers[:] = [handler]
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate


@contextlib.contextmanager
def quiet():
    """Silence what transformers, peft, bitsandbytes and TRL print and log for real runs, and the warnings
    listed in NOISE; every other warning reaches the caller once the block ends, and a log record saying a
    result may be silently incorrect reaches it as a RuntimeWarning."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                _library_logs_captured():
            warnings.simplefilter("always")
            yield
    finally:
        _reemit([w for w in caught if not is_noise(w)])


@contextlib.contextmanager
def failing_on_silently_incorrect():
    """Raise SilentlyIncorrect at the end of the block if a library warned in it that a result may be
    silently incorrect (torch: "an autograd kernel was not registered ... silently incorrect behavior");
    the other warnings reach the caller as they were."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        wrong = [w for w in caught if says_silently_incorrect(w.message)]
        _reemit([w for w in caught if w not in wrong])
    if wrong:
        seen: list[str] = []
        for w in wrong:
            text = f"{w.category.__name__}: {w.message}"
            if text not in seen:
                seen.append(text)
        raise SilentlyIncorrect(seen)
