"""The public example configs of Axolotl, LLaMA-Factory, TRL and alignment-handbook (tests/public_configs, pinned
commits in its manifest), checked as a user checks them: `recipe-checks check DIR --gpu h100-sxm --recipes-all-gpus`,
static checks. No internal error, and every error finding is one expectations.yaml records with the reason it is
true: a new error on a public example fails here until someone shows it is true, or fixes it.

Refresh after a deliberate change: `python -m tests.test_public_configs --write` rewrites expectations.yaml with the
errors found, keeping the reasons already written and marking new ones `reason: null`, which the test refuses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent / "public_configs"
EXPECTATIONS = HERE / "expectations.yaml"
GPU = "h100-sxm"
UNRESOLVED: list[str] = []  # filled by check_corpus
UNRESOLVED_AT_MOST = 153  # a ratchet: lower it as models are bundled (the goal: a quarter of the recipes, 71)


def _relative(path: Path) -> str:
    return path.resolve().relative_to(HERE).as_posix()


def check_corpus() -> tuple[dict[str, list[dict]], list[str], int, dict[str, list[str]]]:
    """Every recipe a directory search finds under the corpus, checked: the error findings of each (rule, line, key,
    message), the internal errors, the number of recipes, and the files left out with why. The recipes whose model
    is not resolved offline (RC106) are counted in UNRESOLVED."""
    from recipe_checks.discover import discover_recipes
    from recipe_checks.engine import check_recipe
    from recipe_checks.gpus import GpuCatalog
    from recipe_checks.network import offline
    from recipe_checks.options import Options

    catalog, options = GpuCatalog.load(), Options(gpus=(GPU,), all_gpus=True, cache_dir=None)
    left_out: list[tuple[Path, str]] = []
    recipes = sorted(discover_recipes([str(HERE)], not_recipes=left_out))
    errors: dict[str, list[dict]] = {}
    internal: list[str] = []
    UNRESOLVED.clear()
    with offline(False):
        for path in recipes:
            _, results = check_recipe(path, options, catalog, traced=False)
            if any(f.rule_id == "RC106" for r in results for f in r.findings):
                UNRESOLVED.append(_relative(path))
            for result in results:
                if result.error is not None:
                    internal.append(f"{_relative(path)}::{result.check}: {type(result.error).__name__}: {result.error}")
                for f in result.findings:
                    if f.is_error:
                        errors.setdefault(_relative(path), []).append(
                            {"rule": f.rule_id, "line": f.location.line, "key": f.key, "message": f.message})
    return errors, internal, len(recipes), {_relative(p): why for p, why in left_out}


def _key(finding: dict) -> tuple:
    return finding["rule"], finding["line"], finding["key"]


def test_the_corpus_is_at_least_150_public_configs_from_pinned_commits():
    manifest = yaml.safe_load((HERE / "manifest.yaml").read_text())
    folders = {source["folder"] for source in manifest["sources"]}
    assert all(len(source["commit"]) == 40 and source["license"] for source in manifest["sources"])
    files = [p for p in HERE.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml")
             and p.parent != HERE]
    assert {p.relative_to(HERE).parts[0] for p in files} == folders
    assert len(files) >= 150


def test_every_error_on_a_public_config_is_recorded_as_true_with_its_reason_and_none_is_internal():
    errors, internal, count, _ = check_corpus()
    assert internal == []
    assert count >= 150
    expected = yaml.safe_load(EXPECTATIONS.read_text())["errors"]
    unexplained = [f"{path}:{e['line']} {e['rule']} {e['key']}" for path, found in expected.items() for e in found
                   if not (e.get("reason") or "").strip()]
    assert unexplained == [], "expectations without a reason"
    found = {path: sorted(map(_key, items)) for path, items in errors.items()}
    recorded = {path: sorted(map(_key, items)) for path, items in expected.items()}
    new = {p: sorted(set(found.get(p, [])) - set(recorded.get(p, []))) for p in found}
    gone = {p: sorted(set(recorded.get(p, [])) - set(found.get(p, []))) for p in recorded}
    assert {p: v for p, v in new.items() if v} == {}, "errors no expectation records (true? say why; false? fix it)"
    assert {p: v for p, v in gone.items() if v} == {}, "recorded errors no longer found (update expectations.yaml)"
    # The models people train, resolved offline: the goal is at most a quarter of these configs stopping at RC106
    # (issue 20), not met yet (153 of 285, measured 2026-12-08). Until it is, the count may only fall.
    assert len(UNRESOLVED) <= UNRESOLVED_AT_MOST, (len(UNRESOLVED), count, UNRESOLVED)


def _write() -> None:
    errors, internal, count, left_out = check_corpus()
    old = yaml.safe_load(EXPECTATIONS.read_text())["errors"] if EXPECTATIONS.exists() else {}
    reasons = {(path, _key(e)): e.get("reason") for path, items in old.items() for e in items}
    out = {path: [{**{k: e[k] for k in ("rule", "line", "key")}, "reason": reasons.get((path, _key(e))),
                   "message": e["message"]} for e in items] for path, items in sorted(errors.items())}
    header = ("# The error findings recipe-checks gives on tests/public_configs (tests/test_public_configs.py), each with\n"
              "# the reason it is true. `message` is what the finding said when it was recorded (not compared).\n")
    EXPECTATIONS.write_text(header + yaml.safe_dump({"recipes": count, "errors": out}, sort_keys=False, width=120,
                                                    allow_unicode=True))
    print(f"{count} recipes, {sum(map(len, errors.values()))} errors in {len(errors)} files, {len(internal)} internal; "
          f"{len(left_out)} files left out; {len(UNRESOLVED)} recipes with an unresolved model (RC106)")


if __name__ == "__main__" and sys.argv[1:2] == ["--write"]:
    _write()
