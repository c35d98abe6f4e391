"""The reference commands: `explain` a rule, list `gpus` and bundled `models`, print the `schema`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recipe_checks.cli.common import EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    explain = sub.add_parser("explain", help="print a rule's documentation (no argument: list the rules)")
    explain.add_argument("rule", nargs="?", help="a rule id (RC301) or name (qlora-paged-optimizer)")
    explain.set_defaults(func=_cmd_explain)

    gpus = sub.add_parser("gpus", help="list the known GPU profiles")
    gpus.add_argument("--gpu-profiles", action="append", default=[], metavar="FILE")
    gpus.set_defaults(func=_cmd_gpus)

    models = sub.add_parser("models", help="list the model configs bundled with recipe-checks")
    models.set_defaults(func=_cmd_models)

    schema = sub.add_parser("schema", help="print the JSON Schema of the recipe format (the one shipped with "
                            "the package, generated with the pinned libraries)")
    schema.add_argument("--output", "-o", help="write it to this file")
    schema.add_argument("--installed", action="store_true",
                        help="generate it from the installed transformers and peft instead (imports them)")
    schema.set_defaults(func=_cmd_schema)


def _cmd_explain(args: argparse.Namespace) -> int:
    from recipe_checks.rules import all_rules, rule_by_id

    if not args.rule:
        for rule in all_rules():
            print(f"{rule.id}  {rule.name:<28} {rule.check:<15} {rule.severity.value:<8} {rule.why}")
        return EXIT_OK
    rule = rule_by_id(args.rule)
    if rule is None:
        from recipe_checks.suggest import did_you_mean

        known = [r.id for r in all_rules()] + [r.name for r in all_rules()]
        print(f"recipe-checks: no rule '{args.rule}'. {did_you_mean(args.rule, known)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"# {rule.id} {rule.name} (check: {rule.check}, {rule.severity.value})\n")
    print(rule.doc())
    return EXIT_OK


def _cmd_gpus(args: argparse.Namespace) -> int:
    from recipe_checks.gpus import GIB, GpuCatalog, GpuProfileError

    try:
        catalog = GpuCatalog.load(tuple(args.gpu_profiles))
    except GpuProfileError as exc:  # a usage error, as `check` and `estimate` report it
        print(f"recipe-checks: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{'name':<16}{'GPU':<34}{'GiB':>6}{'CC':>6}{'bf16':>6}{'fp8':>5}{'bf16 TFLOP/s':>14}{'GB/s':>7}")
    for p in catalog:
        tflops = f"{p.dense_bf16_tflops:g}" if p.dense_bf16_tflops else "-"
        bandwidth = f"{p.memory_bandwidth_gbs:g}" if p.memory_bandwidth_gbs else "-"
        print(f"{p.key:<16}{p.name[:33]:<34}{p.memory_bytes / GIB:>6.1f}{p.compute_capability:>6}"
              f"{'yes' if p.bf16 else 'no':>6}{'yes' if p.fp8 else 'no':>5}{tflops:>14}{bandwidth:>7}")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from recipe_checks.models.resolve import bundled_index

    seen = set()
    for entry in bundled_index().values():
        if entry.hub_id in seen:
            continue
        seen.add(entry.hub_id)
        aliases = f"  (also: {', '.join(entry.aliases)})" if entry.aliases else ""
        print(f"{entry.hub_id}{aliases}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from recipe_checks.recipe.jsonschema import recipe_json_schema, schema_text, shipped_schema_text

    text = schema_text(recipe_json_schema()) if args.installed else shipped_schema_text()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK
