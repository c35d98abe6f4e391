"""Offline unless the user allows the network: no check, trace or real step opens a connection by itself.

The libraries a real step runs reach the network on their own: TRL's trainers send telemetry from their
constructor, huggingface_hub and transformers ask the hub for files a cache lacks. recipe-checks sets each
library's own switches for the time of its work (the environment for what is imported later, the module
constants of what is already imported: recipe_checks.compat.offline_constants) and puts them back afterwards,
so a host project's own tests under the plugin keep the network they had. `--recipes-allow-network`
(`--allow-network` on the command line) leaves them alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# What each library reads: huggingface_hub (HF_HUB_OFFLINE, HF_HUB_DISABLE_TELEMETRY), transformers
# (TRANSFORMERS_OFFLINE, the older name), datasets (HF_DATASETS_OFFLINE), diffusers and gradio-era code
# (DISABLE_TELEMETRY), and the experiment trackers a Trainer would report to (WANDB_MODE).
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
}


@contextlib.contextmanager
def offline(allow_network: bool = False) -> Iterator[None]:
    """The libraries offline and without telemetry inside the block (nothing changed when the network is
    allowed), as they were afterwards."""
    if allow_network:
        yield
        return
    from recipe_checks import compat

    saved_environment = {name: os.environ.get(name) for name in OFFLINE_ENVIRONMENT}
    os.environ.update(OFFLINE_ENVIRONMENT)
    saved_constants = compat.offline_constants(True)
    try:
        yield
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        compat.restore_constants(saved_constants, _environment_says)


# Which variables decide each constant, as the libraries read them at import.
_DECIDED_BY = {
    "HF_HUB_OFFLINE": ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"),
    "HF_DATASETS_OFFLINE": ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"),
    "HF_HUB_DISABLE_TELEMETRY": ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK"),
}


def _environment_says(constant: str) -> bool:
    return any((os.environ.get(name) or "").upper() in {"1", "ON", "YES", "TRUE"} for name in _DECIDED_BY[constant])
