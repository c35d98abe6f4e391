"""A check's result kept between runs (in the result cache's directory), for recipes whose every input is known
before the recipe is validated: an unchanged recipe then costs neither the libraries' import nor a rule.

The key holds what decides a check's result: the recipe file's text (its findings point at its lines) and
display path, the model config it resolves to (read as the engine reads it), the target GPU's profile, the
options that change verdicts, this CPU's kernel features, and the result cache's environment (recipe-checks'
source hash, the libraries' versions). A recipe that reads other files (a distributed section's DeepSpeed or
accelerate file), a run with extra GPU profile files, a baseline or network access, a check on a CUDA device,
and a check that crashed are never stored: they fall back to the trace and step entries below.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recipe_checks import result_cache
from recipe_checks.findings import Finding, Location, Severity

KIND = "check"
_PARTS_MEMO = "check-cache-parts"
_MODEL_KEYS = ("id", "config", "revision", "component")


def _model_reference(data: dict) -> dict | None:
    """The model reference as resolve_model_config takes it, when the raw file states it plainly."""
    model = data.get("model")
    if isinstance(model, str):
        return {"id": model, "config": None, "revision": None, "component": None}
    if not isinstance(model, dict):
        return None
    reference = {key: model.get(key) for key in _MODEL_KEYS}
    if not all(value is None or isinstance(value, str) for value in reference.values()):
        return None
    return reference if reference["id"] or reference["config"] else None


def _model_part(state) -> Any:
    from recipe_checks.models.resolve import ModelResolutionError, resolve_model_config

    reference = _model_reference(state.loaded.data)
    if reference is None:
        return None
    try:
        resolved = resolve_model_config(reference["id"], reference["config"], revision=reference["revision"],
                                        base_dir=state.fs_path.parent, allow_network=False,
                                        component=reference["component"])
    except ModelResolutionError as exc:  # unresolved: RC106's message is part of what decides the result
        return {"unresolved": str(exc), "help": exc.help}
    except Exception:  # noqa: BLE001  what the engine would report some other way: not stored
        return None
    return {"config": resolved.config, "source": resolved.source, "name": resolved.name}


def recipe_parts(state) -> dict | None:
    """What decides every check of this recipe, or None when its results are not stored (once per recipe)."""
    if _PARTS_MEMO not in state.memo:
        state.memo[_PARTS_MEMO] = _recipe_parts(state)
    return state.memo[_PARTS_MEMO]


def _recipe_parts(state) -> dict | None:
    options = state.options
    loaded = state.loaded
    if (loaded is None or loaded.distributed_files is not None or options.cache_dir is None or options.baseline
            or options.gpu_profiles or options.allow_network):
        return None
    model = _model_part(state)
    if model is None:
        return None
    return {
        "path": state.path, "text": loaded.text, "model": model, "cpu": result_cache.cpu_features(),
        "options": {"gpus": list(options.gpus), "all_gpus": options.all_gpus, "strict": options.strict,
                    "trust_remote_code": options.trust_remote_code, "ignore": dict(options.ignore),
                    "train_steps": options.train_steps, "format": options.format},
    }


def _parts(state, check: str, gpu: str | None, extra: dict | None) -> dict | None:
    recipe = recipe_parts(state)
    if recipe is None:
        return None
    profile = state.gpu_profile(gpu) if gpu is not None else None
    return {**recipe, "check": check, "gpu": gpu, "profile": repr(profile), "extra": extra}


def _finding_json(finding: Finding) -> dict:
    return {**dataclasses.asdict(finding), "severity": finding.severity.value, "details": list(finding.details)}


def _finding(data: Any) -> Finding:
    values = dict(data)
    location = Location(**values.pop("location"))
    return Finding(**{**values, "location": location, "severity": Severity(values["severity"]),
                      "details": tuple(values["details"])})


def encode(result) -> dict | None:
    if result.error is not None:
        return None
    return {"findings": [_finding_json(f) for f in result.findings],
            "suppressed": [_finding_json(f) for f in result.suppressed],
            "skipped": result.skipped, "waiting": list(result.waiting), "judged": sorted(result.judged)}


def decoder(check: str, gpu: str | None):
    from recipe_checks.engine import CheckResult

    def decode(data: Any):
        try:
            return CheckResult(check=check, gpu=gpu, findings=[_finding(f) for f in data["findings"]],
                               suppressed=[_finding(f) for f in data["suppressed"]], skipped=data["skipped"],
                               waiting=[str(w) for w in data["waiting"]], judged={str(j) for j in data["judged"]})
        except Exception as exc:  # any other shape is no entry of ours
            raise result_cache.NotAnEntry(f"a check result: {type(exc).__name__}") from None

    return decode


def load(state, check: str, gpu: str | None, extra: dict | None = None):
    """The stored result of this check, or None (not stored, or not to be stored). `extra`: what else decides
    it (the unused-ignore post-pass: the rules the run judged and the findings it suppressed)."""
    store = result_cache.store_for(state.options.cache_dir)
    parts = _parts(state, check, gpu, extra) if store is not None else None
    key = store.key(KIND, parts) if parts is not None else None
    if key is None:
        return None
    found = store.get(KIND, key, decoder(check, gpu))
    return None if found is result_cache.MISS else found


def _step_settled(state, check: str) -> bool:
    """Whether the real step this check judged (if any) gave an outcome that is the recipe's to keep: a refused
    step (a library's refusal, a warning of silently incorrect results), a missing extra, or a tiny model that
    could not be built may be this machine's or this moment's, and is computed again next time."""
    outcome = state.memo.get(check) if check in ("cpu-step", "cpu-train") else None  # their memo keys
    if outcome is None:
        return True
    fixture_failed = bool(outcome.cannot_run) and "could be built" in outcome.cannot_run  # tiny_model's message
    fixture_failed = fixture_failed or bool(outcome.fixture_error)
    return outcome.refused is None and not getattr(outcome, "missing_extra", None) and not fixture_failed


def save(state, check: str, gpu: str | None, result, extra: dict | None = None) -> None:
    if not _step_settled(state, check):
        return
    store = result_cache.store_for(state.options.cache_dir)
    parts = _parts(state, check, gpu, extra) if store is not None else None
    key = store.key(KIND, parts) if parts is not None else None
    if key is None:
        return
    encoded = result_cache.faithful(result, encode, decoder(check, gpu))
    if encoded is not None:
        store.put(KIND, key, encoded)
