"""The rules, one per module. The registry imports each module below and indexes it by rule id."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from recipe_checks.rules.base import Rule

CHECKS = ("schema", "target-modules", "quantization", "precision", "optimizer", "throughput", "vram", "cpu-step", "cpu-train",
          "gpu-step", "gpu-train")
GPU_CHECKS = frozenset({"precision", "optimizer", "throughput", "vram", "gpu-step", "gpu-train"})
# Checks that trace a training step (seconds, not milliseconds): deselect with -k "not vram".
TRACED_CHECKS = frozenset({"vram"})
# Checks that run the recipe for real (a tiny-random model on the CPU, the full-size one on a GPU).
RUN_CHECKS = frozenset({"cpu-step", "cpu-train", "gpu-step", "gpu-train"})
# Checks that need a CUDA GPU: marked `gpu`, run where CUDA is present and skipped elsewhere, saying so.
CUDA_CHECKS = frozenset({"gpu-step", "gpu-train"})
# A check that runs only when another passed: a training run adds nothing where one step already fails.
PREREQUISITES = {"cpu-train": "cpu-step", "gpu-train": "gpu-step"}
# Checks marked `slow` (seconds a recipe): deselect with -m "not slow".
SLOW_CHECKS = frozenset({"cpu-train", "gpu-step", "gpu-train"})
# The engine's post-pass after every other check of a recipe: ignores that suppressed nothing (RC109).
IGNORES_CHECK = "ignores"


@functools.cache
def all_rules() -> tuple[type[Rule], ...]:
    rules: list[type[Rule]] = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("rc"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        rules.extend(
            obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module.__name__
        )
    return tuple(sorted(rules, key=lambda r: r.id))


def stopping_rule_ids() -> frozenset[str]:
    """The rules whose errors say the step cannot be built or started as written (`Rule.stops_the_step`): the only
    ones a failed trace or real step may be blamed on."""
    return frozenset(r.id for r in all_rules() if r.stops_the_step)


def rules_for(check: str) -> tuple[type[Rule], ...]:
    return tuple(r for r in all_rules() if r.check == check)


def rule_by_id(rule_id: str) -> type[Rule] | None:
    wanted = rule_id.strip().upper()
    return next((r for r in all_rules() if r.id == wanted or r.name == rule_id.strip().lower()), None)
