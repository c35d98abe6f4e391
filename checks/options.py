"""Run options shared by the pytest plugin and the command line, declared once for both.

`add_options` takes an `add` callable with argparse's signature, so pytest's option group and an
argparse parser get the same flags, defaults and help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from recipe_checks.result_cache import cache_directory


@dataclass(frozen=True)
class Options:
    gpus: tuple[str, ...] = ()  # --gpu; empty: each recipe's own GPUs
    all_gpus: bool = False  # --recipes-all-gpus
    allow_network: bool = False
    trust_remote_code: bool = False
    strict: bool = False  # warnings fail too
    ignore: dict[str, str] = field(default_factory=dict)  # project-wide rule id -> reason
    gpu_profiles: tuple[str, ...] = ()  # extra profile files
    fixture_cache: str | None = None  # huggingface_hub cache of the tiny-random models (None: its default)
    train_steps: int = 30  # optimizer steps of cpu-train and gpu-train
    format: str = "auto"  # --recipes-format: how files are read (auto: recognised by their keys; recipe_checks.formats)
    baseline: str | None = None  # --recipes-baseline: a git REF or an `estimate --json` file
    baseline_threshold: float = 0.05  # a traced peak rising by more than this fraction fails
    # the result cache's directory (checks/result_cache.py); None: no cache. Default: the environment's
    # (RECIPE_CHECKS_NO_CACHE, RECIPE_CHECKS_CACHE_DIR), else the platform's user cache directory
    cache_dir: str | None = field(default_factory=cache_directory)


def split_names(values: list[str] | None) -> tuple[str, ...]:
    names: list[str] = []
    for value in values or []:
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return tuple(names)


GPU_HELP = ("check recipes against this target GPU (repeat or comma-separate for several); "
            "recipes that declare other GPUs are deselected. `recipe-checks gpus` lists the names.")


def add_options(add: Callable[..., Any], *, gpu_flag: str = "--gpu") -> None:
    """The options the command line and the pytest plugin share. The plugin's GPU flag is --recipes-gpu, and
    --gpu only where the host project has no --gpu of its own (checks/plugin.py)."""
    add(gpu_flag, action="append", default=[], metavar="NAME", help=GPU_HELP)
    add(
        "--recipes-all-gpus",
        action="store_true",
        default=False,
        help="with --gpu: check every recipe against the given GPU, whatever GPUs it declares",
    )
    add(
        "--recipes-allow-network",
        action="store_true",
        default=False,
        help="allow the network: download a model's config.json from the hub when it is not local, cached or "
             "bundled, and leave the libraries' own online and telemetry settings as they are (by default "
             "recipe-checks keeps them offline while it works)",
    )
    add(
        "--recipes-trust-remote-code",
        action="store_true",
        default=False,
        help="allow building models whose recipe sets model.trust_remote_code (runs the repository's code)",
    )
    add(
        "--recipes-strict",
        action="store_true",
        default=False,
        help="fail on warnings too (e.g. fp16 on a family known to overflow)",
    )
    add(
        "--gpu-profiles",
        action="append",
        default=[],
        metavar="FILE",
        help="extra GPU profiles (YAML, same format as the shipped profiles.yaml)",
    )
    add(
        "--recipes-format",
        choices=("auto", "native", "axolotl", "llamafactory", "trl"),
        default="auto",
        help="read recipe files as this tool's config (default auto: an Axolotl, LLaMA-Factory or TRL config "
        "is recognised by its keys; a file with a top-level 'model' key is a native recipe)",
    )
    add(
        "--recipes-train-steps",
        type=positive_steps,
        default=30,
        metavar="N",
        help="optimizer steps of the short training runs (cpu-train, gpu-train; default 30)",
    )


def add_ci_options(add: Callable[..., Any], *, cli: bool = False) -> None:
    """The CI gating flags (changed-only runs, the regression gate); `cli`: the command line's spellings too."""
    add(
        "--recipes-changed-since", *(("--changed-since",) if cli else ()),
        dest="recipes_changed_since",
        default=None,
        metavar="REF",
        help="check only the recipes that differ between the git REF and the working tree (untracked ones "
        "included); every recipe when the pytest settings, a conftest.py or a --gpu-profiles file changed",
    )
    add(
        "--recipes-baseline",
        default=None,
        metavar="REF|FILE.json",
        help="regression gate: fail a recipe whose traced peak rose by more than the threshold, that stopped "
        "fitting, or whose throughput ceiling fell, against the recipe at the git REF or the `recipe-checks "
        "estimate --json` output in FILE.json",
    )
    add(
        "--recipes-baseline-threshold",
        type=percent,
        default=0.05,
        metavar="PERCENT",
        help="with --recipes-baseline: the rise in traced peak (and fall in throughput ceiling) that fails, "
        "in percent (default 5)",
    )


def add_cache_options(add: Callable[..., Any], *, cli: bool = False) -> None:
    """The result cache's flags (checks/result_cache.py); `cli`: the command line's short spellings too."""
    add(
        "--recipes-cache-dir", *(("--cache-dir",) if cli else ()),
        dest="recipes_cache_dir",
        default=None,
        metavar="DIR",
        help="keep traced and real steps' results in DIR, keyed by everything that decides them (default: "
        "$RECIPE_CHECKS_CACHE_DIR, else the platform's user cache directory, e.g. ~/.cache/recipe-checks)",
    )
    add(
        "--recipes-no-cache", *(("--no-cache",) if cli else ()),
        dest="recipes_no_cache",
        action="store_true",
        default=False,
        help="neither read nor write the result cache (also RECIPE_CHECKS_NO_CACHE=1)",
    )


def percent(value: str) -> float:
    """An argparse type: '5' or '5%' as the fraction 0.05, from 0 to 1000 percent, or a readable error."""
    import argparse

    try:
        number = float(value.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a percentage (e.g. 5 or 5%)") from None
    if not 0 <= number <= 1000:
        raise argparse.ArgumentTypeError(f"{value}: give 0 to 1000 percent")
    return number / 100


def positive_steps(value: str) -> int:
    """An argparse type: a step count from 1 to 10,000, or a readable error."""
    import argparse

    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number of steps") from None
    if not 1 <= steps <= 10_000:
        raise argparse.ArgumentTypeError(f"{steps} steps: give 1 to 10000")
    return steps


def parse_ignore_lines(lines: list[str]) -> dict[str, str]:
    """'RC301: reason' lines (the pytest ini form) into rule id -> reason."""
    ignores: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rule_id, _, reason = line.partition(":")
        ignores[rule_id.strip().upper()] = reason.strip() or "ignored for the whole project"
    return ignores
