"""Diffusion transformers from a diffusers config.json: recognise one, build it on the meta device.

diffusers is an optional extra (`pip install recipe-checks[diffusers]`), imported only here and only
when a recipe's model is a diffusers component; without it the model-dependent checks get RC114.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from recipe_checks.limits import shorten

EXTRA = "diffusers"
INSTALL = f"pip install 'recipe-checks[{EXTRA}]'"
# The diffusers model classes recipe-checks traces a training step of (its step and loss are in
# checks/memory/diffusion.py); any other _class_name gets RC106 saying so.
SUPPORTED_CLASSES = ("FluxTransformer2DModel",)


class DiffusersMissing(ImportError):
    """diffusers is not installed: the recipe's model cannot be built."""


def is_diffusers_config(config: Any) -> bool:
    """A diffusers component's config.json: it names its class (`_class_name`), not a transformers model_type."""
    return isinstance(config, dict) and "model_type" not in config and "_class_name" in config


def class_name(config: dict[str, Any]) -> str:
    return str(config.get("_class_name", ""))


def class_name_problem(config: dict[str, Any]) -> str | None:
    name = config.get("_class_name")
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 100:
        return f"'_class_name' must be a diffusers class name such as \"FluxTransformer2DModel\", not {shorten(json.dumps(name), 60)}"
    return None


def import_diffusers():
    """The diffusers package, or DiffusersMissing naming the extra."""
    try:
        import diffusers
    except ImportError as exc:
        raise DiffusersMissing(f"diffusers is not installed ({exc}); {INSTALL}") from None
    return diffusers


def model_class(config: dict[str, Any]):
    """The diffusers class a config names; ValueError for a class recipe-checks does not trace."""
    name = class_name(config)
    if name not in SUPPORTED_CLASSES:
        raise ValueError(f"'{shorten(name, 80)}' is not a diffusers model recipe-checks traces "
                         f"(supported: {', '.join(SUPPORTED_CLASSES)})")
    return getattr(import_diffusers(), name)


def build_diffusers_model(config: dict[str, Any], *, device: str = "meta", dtype=None):
    """The model, as `from_pretrained` builds it before loading weights: diffusers' `from_config`
    (its keys starting with '_' are diffusers' own bookkeeping, read by from_config itself)."""
    import torch

    from recipe_checks.library_warnings import quiet

    cls = model_class(config)
    logger = logging.getLogger("diffusers")  # advice meant for real loads ("cast with torch_dtype instead")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet(), torch.device(device):
            model = cls.from_config(dict(config))
            if dtype is not None:
                model.to(dtype)
    finally:
        logger.setLevel(level)
    return model


def guidance_embeds(config: dict[str, Any]) -> bool:
    """FLUX.1-dev is guidance-distilled: its transformer takes the guidance scale as an input."""
    return bool(config.get("guidance_embeds", False))
