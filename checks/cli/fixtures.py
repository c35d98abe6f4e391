"""`recipe-checks fixtures build|list`: tiny-random models of the recipes' architectures in the hub cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recipe_checks.cli.common import EXIT_OK, EXIT_USAGE, lexists


def register(sub) -> None:
    fixtures = sub.add_parser("fixtures", help="tiny-random models of the recipes' architectures in the "
                              "huggingface_hub cache: build them, or list those cached")
    fixtures_sub = fixtures.add_subparsers(dest="action", required=True)
    build = fixtures_sub.add_parser("build", help="build (or find) the tiny fixtures of recipes or models")
    build.add_argument("names", nargs="*", metavar="RECIPE_OR_MODEL",
                       help="recipe files, directories of recipes, hub ids or model directories")
    build.add_argument("--all", action="store_true", help="every model bundled with recipe-checks")
    listing = fixtures_sub.add_parser("list", help="list the tiny fixtures in the cache")
    for action in (build, listing):
        action.add_argument("--cache-dir", metavar="DIR",
                            help="huggingface_hub cache directory (default: HF_HUB_CACHE, else HF_HOME/hub)")
    fixtures.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build (or find) tiny-random fixtures in the huggingface_hub cache, or list those it holds."""
    from recipe_checks.fixtures.cache import cached_fixtures, default_cache_dir

    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.action == "list":
        repos, warnings = cached_fixtures(cache)
        for repo in repos:
            for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
                refs = f" ({', '.join(sorted(revision.refs))})" if revision.refs else ""
                print(f"{repo.repo_id}  {revision.commit_hash}{refs}  {_size(revision.size_on_disk)}")
        for warning in warnings:
            print(f"recipe-checks: warning: {warning}", file=sys.stderr)
        print(f"{len(repos)} fixture(s) in {cache}")
        return EXIT_OK

    from recipe_checks.compat import version_warnings
    from recipe_checks.fixtures.cache import bundled_models, ensure_fixture, recipe_models
    from recipe_checks.fixtures.tiny import FixtureError
    from recipe_checks.models.resolve import ModelResolutionError, resolve_model_config

    if not args.names and not args.all:
        print("recipe-checks: fixtures build needs recipes or model ids, or --all for every bundled model",
              file=sys.stderr)
        return EXIT_USAGE
    for warning in version_warnings():
        print(f"recipe-checks: warning: {warning}", file=sys.stderr)
    try:
        # Everything is resolved before anything is built: a typo fails fast, with nothing half done.
        models = [(model, "CAUSAL_LM") for model in bundled_models()] if args.all else []
        for name in args.names:
            if lexists(name):  # a recipe file, or a directory of recipes (a model directory is a model)
                if Path(name).is_dir() and (Path(name) / "config.json").is_file():
                    models.append((resolve_model_config(name), "CAUSAL_LM"))
                else:
                    models.extend(recipe_models([name]))
            else:
                models.append((resolve_model_config(name), "CAUSAL_LM"))
        seen: set[str] = set()
        for model, task_type in models:
            fixture = ensure_fixture(model, cache_dir=cache, task_type=task_type)
            if fixture.repo_id in seen:
                continue
            seen.add(fixture.repo_id)
            print(f"{fixture.repo_id}  {fixture.revision}  {'built' if fixture.built else 'cached'}  "
                  f"{_size(fixture.size_bytes)}  {model.name}")
    except (ModelResolutionError, FixtureError) as exc:
        print(f"recipe-checks: {exc}\nhelp: {exc.help}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{len(seen)} fixture(s) in {cache}")
    return EXIT_OK


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"
