"""Benchmark: building the tiny-random fixture of every bundled model into an empty huggingface_hub cache.

Run:  pytest bench/test_fixture_build.py --benchmark-only
Time: `build_all` into a new empty cache directory each round, libraries imported, the meta-device cache
of the full models cleared (each build checks the tiny model's modules against the full model's). The
issue's target is under 30 s for all of them. A second benchmark runs the same in a fresh process,
imports included, and reports that process's own peak RSS.
"""

from __future__ import annotations

import itertools

from recipe_checks.fixtures import cache
from recipe_checks.models import skeleton

_ROUND = itertools.count()


def _empty_cache(tmp_path):
    def setup():
        skeleton._build_cached.cache_clear()
        return (tmp_path / f"hub-{next(_ROUND)}",), {}

    return setup


def test_build_every_bundled_fixture_into_an_empty_cache(benchmark, tmp_path, report_figure):
    fixtures = benchmark.pedantic(cache.build_all, setup=_empty_cache(tmp_path), rounds=3, iterations=1)
    assert len(fixtures) == len(cache.bundled_models()) and all(f.built for f in fixtures)
    total = sum(f.size_bytes for f in fixtures)
    report_figure(f"fixtures: {len(fixtures)} built, {total / 2**20:.1f} MiB in all, "
                  f"largest {max(f.size_bytes for f in fixtures) / 2**20:.2f} MiB")


FRESH_PROCESS = """\
import sys
from recipe_checks.fixtures.cache import build_all
print(sum(f.built for f in build_all(sys.argv[1])))
"""


def test_build_every_bundled_fixture_in_a_fresh_process(benchmark, fresh_process, report_figure, tmp_path):
    run = benchmark.pedantic(lambda: fresh_process(["-c", FRESH_PROCESS, str(tmp_path / "hub")]),
                             rounds=1, iterations=1)
    assert run.returncode == 0
    assert run.stdout.split() == [str(len(cache.bundled_models()))]  # every fixture built, none found
    benchmark.extra_info["max_rss_bytes"] = run.max_rss_bytes
    report_figure(f"fixtures of every bundled model: fresh process, max RSS {run.max_rss_bytes / 2**30:.2f} GiB")
