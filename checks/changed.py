"""Which recipes differ from a git REF: the changed-only runs of CI (`--recipes-changed-since=REF`).

One function, `changes_since`, serves the pytest plugin and the command line; git itself decides what
changed (`git diff --name-only REF` against the working tree, plus untracked files not ignored).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Files whose change changes what every recipe is checked against: the pytest settings and conftests.
DECIDING_NAMES = frozenset({"pytest.ini", ".pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "conftest.py"})
GIT_TIMEOUT_S = 60


class ChangedSinceError(Exception):
    """A REF that is no commit, a path outside a git repository, or git failing: a usage error."""


@dataclass(frozen=True)
class Changes:
    ref: str
    root: Path  # the repository's top level
    changed: frozenset[Path]  # resolved paths of the files that differ from REF and still exist
    everything: str | None  # why every recipe is checked (a deciding file changed); None: changed ones only
    removed: frozenset[Path] = frozenset()  # resolved paths of the files that differ from REF and are gone

    def selects(self, path: Path, inputs: Iterable[Path] = ()) -> bool:
        """Whether the recipe at `path` is checked in this run: it changed, or a file it reads did (`inputs`:
        recipe_checks.recipe.inputs, the files and folders it reads), or every recipe is checked."""
        return self.everything is not None or self.changed_input(path, inputs) is not None

    def changed_input(self, path: Path, inputs: Iterable[Path] = ()) -> Path | None:
        """The first of the recipe and the files it reads that changed, was added or was removed (a file under
        a folder it reads counts as the folder); None where none did."""
        touched = self.changed | self.removed
        for candidate in (path, *inputs):
            resolved = candidate.resolve()
            if resolved in touched or any(resolved in p.parents for p in touched):
                return candidate
        return None


def git(root: Path, *args: str) -> str:
    """A git command's output, run in `root` with a time limit; ChangedSinceError with git's message."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ChangedSinceError("git is not installed (or not on PATH): changed-only runs need it") from None
    except subprocess.TimeoutExpired:
        raise ChangedSinceError(f"`git {' '.join(args)}` took more than {GIT_TIMEOUT_S} s in {root}") from None
    if done.returncode != 0:
        raise ChangedSinceError((done.stderr.strip() or f"git {args[0]} failed").splitlines()[-1])
    return done.stdout


def _names(output: str) -> list[str]:
    return [name for name in output.split("\0") if name]


def changes_since(ref: str, anchor: Path | str, deciding: Iterable[Path | str] = ()) -> Changes:
    """The files that differ between `ref` and the working tree of the repository holding `anchor`
    (a file or directory), untracked files included and deleted ones left out; renamed files count
    under their new name. `deciding`: further files (GPU profiles, the ini file in use) whose change
    means every recipe is checked, as does a change to any DECIDING_NAMES file of the repository.

    Raises ChangedSinceError, saying what to do, for a path outside a repository or an unknown REF.
    """
    root = repository_of(Path(anchor))
    verify_commit(root, ref)
    # -M: a renamed recipe is listed under its new name; deleted files are listed, then dropped below
    diffed = _names(git(root, "diff", "--name-only", "-z", "-M", "--end-of-options", ref, "--"))
    untracked = _names(git(root, "ls-files", "-z", "--others", "--exclude-standard"))
    touched = [root / name for name in diffed + untracked]
    deciding_paths = {Path(p).resolve() for p in deciding}
    everything = next((f"{p.relative_to(root).as_posix()} changed since {ref}" for p in touched
                       if p.name in DECIDING_NAMES or p.resolve() in deciding_paths), None)
    changed = frozenset(p.resolve() for p in touched if p.exists())
    # a removed file: its folder resolved (links followed as for the others), the name as git lists it
    removed = frozenset(p.parent.resolve() / p.name for p in touched if not p.exists())
    return Changes(ref=ref, root=root, changed=changed, everything=everything, removed=removed)


def repository_of(anchor: Path) -> Path:
    """The top level of the git repository holding `anchor` (a file or directory)."""
    anchor = anchor.resolve()
    start = anchor if anchor.is_dir() else anchor.parent
    if not start.is_dir():
        raise ChangedSinceError(f"{anchor} does not exist")
    try:
        return Path(git(start, "rev-parse", "--show-toplevel").strip()).resolve()
    except ChangedSinceError as exc:
        raise ChangedSinceError(f"{start} is not inside a git repository ({exc}); comparing with a REF needs "
                                "the recipes in a git checkout") from None


def verify_commit(root: Path, ref: str) -> None:
    try:
        git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    except ChangedSinceError:
        raise ChangedSinceError(
            f"'{ref}' is not a commit of the repository at {root}; give a branch, tag or commit that exists "
            "there (in a shallow CI checkout fetch it first, e.g. actions/checkout with fetch-depth: 0)"
        ) from None
