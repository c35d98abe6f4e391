"""Benchmarks run with `pytest bench/`; they are kept out of the test suite (no wall-clock asserts there).

Memory is measured per process: a fresh child whose own peak RSS is read from its rusage when it is
reaped (os.wait4), not RUSAGE_CHILDREN, which is the largest of every child this session has reaped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_FIGURES: list[str] = []


@dataclass
class ChildRun:
    returncode: int
    stdout: str
    max_rss_bytes: int  # this child's peak resident set (Linux reports ru_maxrss in KiB)


def run_fresh_process(argv: list[str]) -> ChildRun:
    """Run `python argv...` in a new process from the repository root and read its own peak RSS."""
    with tempfile.TemporaryFile(mode="w+") as out:
        child = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        return ChildRun(child.returncode, out.read(), usage.ru_maxrss * 1024)


@pytest.fixture
def fresh_process():
    """fresh_process([...argv]) -> ChildRun: a new Python process and its own peak RSS."""
    return run_fresh_process


@pytest.fixture
def report_figure():
    """report_figure('...'): a line for the summary printed at the end of the benchmark run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _FIGURES:
        terminalreporter.section("recipe-checks figures (per process)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
