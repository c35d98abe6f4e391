"""The main job cold and warm on one fresh result cache: its wall time each way, and warm over cold.

Run:  python bench/main_job_cache.py [--commit REF] [--keep DIR]
Issue 18's goal: a warm re-run of `pytest --gpu=rtx4090 recipes/` on unchanged recipes takes under 10% of the
cold run. Both runs are the job as CI runs it (-q -p no:cacheprovider) in a fresh process with
RECIPE_CHECKS_CACHE_DIR pointing at a new empty directory; the tiny-random fixtures in the huggingface_hub cache
are built before the cold run, so it measures the checks, not a first-time fixture build. The cache keys by
recipe-checks' own source: with --commit, the runs use that commit's checks/ and recipes/ (exported, imported
first through PYTHONPATH), which edits in the working tree meanwhile cannot change. Figures: docs/cache.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = ["-m", "pytest", "--gpu=rtx4090", "recipes/", "-q", "-p", "no:cacheprovider"]


def engine_hash(tree: Path) -> str:
    """The engine hash the cache keys by, read in a child: a file changed between the runs would make the warm
    run a cold one, and the figures wrong."""
    code = "from recipe_checks.result_cache import engine_hash; print(engine_hash())"
    return subprocess.run([sys.executable, "-c", code], cwd=tree, env=environment(tree), check=True,
                          capture_output=True, text=True).stdout.strip()


def environment(tree: Path, cache_dir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    env.pop("RECIPE_CHECKS_NO_CACHE", None)
    if cache_dir is not None:
        env["RECIPE_CHECKS_CACHE_DIR"] = str(cache_dir)
    return env


def export(commit: str, into: Path) -> Path:
    """The commit's recipe-checks and recipes, as files (git archive): what the runs import and check."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "checks", "recipes", "pyproject.toml"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_job(tree: Path, cache_dir: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *JOB], cwd=tree, env=environment(tree, cache_dir), check=False,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the main job failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def summary(stdout: str) -> str:
    """The job's cache line and its last line (passed, skipped, deselected)."""
    cache = re.search(r"recipe-checks: result cache: .*", stdout)
    return "; ".join(filter(None, [cache.group(0) if cache else "", stdout.strip().splitlines()[-1]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", metavar="REF", help="run that commit's checks/ and recipes/ (default: the "
                        "working tree as it is)")
    parser.add_argument("--keep", metavar="DIR", help="use DIR (must not exist) as the cache and keep it")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="recipe-checks-bench-"))
    tree = export(args.commit, workdir) if args.commit else REPO
    cache_dir = Path(args.keep).absolute() if args.keep else workdir / "cache"
    if cache_dir.exists():
        sys.exit(f"{cache_dir} exists: the cold run needs an empty cache")
    try:
        subprocess.run([sys.executable, "-m", "recipe_checks.cli", "fixtures", "build", "recipes/"], cwd=tree,
                       env=environment(tree), check=True, capture_output=True)
        before = engine_hash(tree)
        print(f"recipe-checks from {tree} (engine hash {before[:12]})")
        cold, cold_out = run_job(tree, cache_dir)
        print(f"cold: {cold:6.1f} s  ({summary(cold_out)})")
        warm, warm_out = run_job(tree, cache_dir)
        print(f"warm: {warm:6.1f} s  ({summary(warm_out)})")
        entries = list((cache_dir / "v1").glob("*.json"))
        size = sum(p.stat().st_size for p in entries)
        print(f"warm / cold: {warm / cold:.1%}  ({len(entries)} entries, {size / 1024:.0f} KiB)")
        if engine_hash(tree) != before:
            print("warning: recipe-checks' source changed during the runs: the warm run was not warm", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
