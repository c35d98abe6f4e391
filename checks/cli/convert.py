"""`recipe-checks convert FILE`: print the native recipe an Axolotl, LLaMA-Factory or TRL config translates to."""

from __future__ import annotations

import argparse
import sys

from recipe_checks.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    convert = sub.add_parser("convert", help="print the native recipe another tool's config translates to")
    convert.add_argument("path", help="an Axolotl, LLaMA-Factory or TRL config (YAML)")
    convert.add_argument("--format", dest="recipes_format", default="auto",
                         choices=("auto", "axolotl", "llamafactory", "trl"),
                         help="read the file as this tool's config (default: recognised by its keys)")
    convert.add_argument("--gpu", default=None, metavar="NAME",
                         help="resolve bf16: auto for this target GPU (default: as on a GPU with bf16)")
    convert.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recipe_checks.formats import FORMATS, LABELS, read_as_native
    from recipe_checks.gpus import GpuCatalog, UnknownGpuError
    from recipe_checks.recipe.load import RecipeLoadError, load_recipe_file

    gpu = None
    if args.gpu:
        try:
            gpu = GpuCatalog.load(()).get(args.gpu)
        except UnknownGpuError as exc:
            print(f"recipe-checks: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        loaded = load_recipe_file(args.path)
    except RecipeLoadError as exc:
        print(f"recipe-checks: {exc.finding.location}: {exc.finding.message}", file=sys.stderr)
        return EXIT_USAGE
    native, error = read_as_native(loaded, args.recipes_format)
    if error is not None:
        print(f"recipe-checks: {error.location}: {error.rule_id} {error.message}\n  help: {error.help}", file=sys.stderr)
        return EXIT_USAGE
    translation = native.translation
    if translation is None or translation.format not in FORMATS:
        print(f"recipe-checks: {args.path} is not an Axolotl, LLaMA-Factory or TRL config (a native recipe, or "
              "nothing recognised); force a format with --format", file=sys.stderr)
        return EXIT_USAGE
    print(render_native(native, gpu, LABELS[translation.format]), end="")
    return EXIT_FINDINGS if translation.untranslated else EXIT_OK


def render_native(native, gpu, label: str) -> str:
    """The native recipe as YAML, opening with comments on what the translation could not carry over."""
    import yaml

    from recipe_checks.shown import shown

    translation = native.translation
    data = _resolved_data(native.data, translation, gpu)
    line = lambda path: native.location(path, at_value=False).line  # noqa: E731
    head = [f"# Native recipe translated from the {label} config {native.path}",
            f"# (mapping: {translation.source}; see docs/formats.md)"]
    if translation.bf16_auto is not None:
        where = f"{gpu.key}: {'bf16' if data['training'].get('bf16') else 'fp16'}" if gpu else "a GPU with bf16"
        head.append(f"# bf16: auto resolved for {where} (on a GPU without bf16 Axolotl trains in fp16)")
    for path, what in translation.resolved:
        head.append(f"# resolved: {path[-1]} (line {line(path)}) -> {what}")
    for path, what in translation.not_checked:
        head.append(f"# not checked: {path[-1]} (line {line(path)}): {what}")
    for path in translation.untranslated:
        head.append(f"# untranslated: {path[-1]} (line {line(path)}) is not carried over")
    # Keys, values and the file's path are the config's text: a line break in one (\n, \r, U+0085, U+2028,
    # U+2029, each a line break to YAML) would end its comment and write the rest as recipe keys. Escaped,
    # each comment stays one line, whatever the config holds.
    return "\n".join(shown(text) for text in head) + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _resolved_data(data: dict, translation, gpu) -> dict:
    """The native data with bf16: auto resolved for `gpu`, as the checks of that GPU see it."""
    import copy

    data = copy.deepcopy(data)
    for (section, key), value in translation.overrides_for(gpu).items():
        data.setdefault(section, {})[key] = value
    return data
