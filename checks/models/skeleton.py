"""Build the real transformers architecture on the meta device: the true module tree, no weights.

Remote code is never run unless the user opted in (--recipes-trust-remote-code) and the recipe asks
for it (model.trust_remote_code: true).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging

from recipe_checks.limits import shorten
from recipe_checks.models.diffusers import is_diffusers_config
from recipe_checks.models.resolve import ResolvedModel, config_problem

_AUTO_CLASS_BY_TASK = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


class ModelBuildError(RuntimeError):
    def __init__(self, message: str, help: str, rule_id: str = "RC106") -> None:
        super().__init__(message)
        self.help = help
        self.rule_id = rule_id


def remote_code_in(config: dict) -> str | None:
    """What repository code transformers would run for this config.json under trust_remote_code, or None.

    transformers runs a repository's Python only through the config's `auto_map` (AutoConfig,
    AutoModelFor..., AutoTokenizer), or for a model_type it does not ship. Any auto_map entry counts,
    not only the auto class a recipe's task names: a trainer loads config, tokenizer and model through
    their own auto classes, and each of them follows its entry.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if is_diffusers_config(config):
        return None  # diffusers components are built from their class name, never through auto_map
    auto_map = config.get("auto_map")
    if auto_map:
        entries = list(auto_map.items()) if isinstance(auto_map, dict) else [("auto_map", auto_map)]
        named = ", ".join(f"{shorten(name, 60)} -> {shorten(target, 80)}" for name, target in entries[:2])
        more = f" and {len(entries) - 2} more" if len(entries) > 2 else ""
        return f"its config.json's auto_map names the repository's code ({named}{more})"
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        return f"its model_type '{shorten(model_type, 60)}' is not one transformers ships"
    return None


def build_config(resolved: ResolvedModel, *, trust_remote_code: bool = False):
    """The transformers config object for a resolved config.json."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    problem = config_problem(resolved.config)  # resolve_model_config checked it; a hand-made one may not be
    if problem:
        raise ModelBuildError(f"model '{shorten(resolved.name)}': {problem}", "use the config.json published with the model")
    values = dict(resolved.config)
    model_type = values.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        if not trust_remote_code:
            raise ModelBuildError(
                f"model '{shorten(resolved.name)}' has model_type '{model_type}', which transformers does not know: "
                "building it would run the model repository's own Python code",
                "review that code, then set model.trust_remote_code: true and pass --recipes-trust-remote-code",
                rule_id="RC107",
            )
        raise ModelBuildError(
            f"model '{shorten(resolved.name)}' needs remote code for model_type '{model_type}', and recipe-checks only "
            "builds architectures that transformers ships",
            "check the recipe against a transformers-native port of the model, or upgrade transformers",
            rule_id="RC107",
        )
    values.pop("auto_map", None)  # remote-code pointers; the native class is used instead
    try:
        return AutoConfig.for_model(model_type, **values)
    except Exception as exc:  # a malformed user config must become a finding, not a crash
        raise ModelBuildError(
            f"model '{shorten(resolved.name)}': transformers rejects its config: {shorten(exc, 300)}",
            "use the config.json published with the model",
        ) from None


def _build(config_json: str, name: str, task_type: str, trust_remote_code: bool):
    import torch
    import transformers

    resolved = ResolvedModel(name=name, config=json.loads(config_json), source="")
    if is_diffusers_config(resolved.config):
        return build_diffusers_skeleton(resolved)
    config = build_config(resolved, trust_remote_code=trust_remote_code)
    auto_class = getattr(transformers, _AUTO_CLASS_BY_TASK.get(task_type, "AutoModelForCausalLM"))
    # transformers logs and prints advice meant for real loads; a check run has no use for it.
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
            model = auto_class.from_config(config)
    except ValueError as exc:
        raise ModelBuildError(
            f"model '{shorten(name)}' ({config.model_type}) has no {auto_class.__name__} architecture: {shorten(exc, 300)}",
            "set lora.task_type to the task this model supports",
        ) from None
    except Exception as exc:
        raise ModelBuildError(
            f"model '{shorten(name)}': building the architecture on the meta device failed: {shorten(exc, 300)}",
            "use the config.json published with the model",
        ) from None
    finally:
        quiet.setLevel(level)
    model.eval()
    return model


def build_diffusers_skeleton(resolved: ResolvedModel):
    """A diffusers component (FLUX's transformer) on the meta device; RC114 when diffusers is not installed."""
    from recipe_checks.models.diffusers import INSTALL, DiffusersMissing, build_diffusers_model, class_name

    try:
        model = build_diffusers_model(resolved.config)
    except DiffusersMissing as exc:
        raise ModelBuildError(f"model '{shorten(resolved.name)}' is a diffusers {class_name(resolved.config)}: {exc}",
                              f"install the diffusers extra: {INSTALL}", rule_id="RC114") from None
    except Exception as exc:  # noqa: BLE001  an unsupported class or a config diffusers rejects: a finding
        raise ModelBuildError(f"model '{shorten(resolved.name)}': diffusers cannot build it: {shorten(exc, 300)}",
                              "use the transformer/config.json published with the pipeline") from None
    model.eval()
    return model


_build_cached = functools.lru_cache(maxsize=16)(_build)


def build_meta_model(
    resolved: ResolvedModel, task_type: str | None = "CAUSAL_LM", *, trust_remote_code: bool = False, fresh: bool = False
):
    """The model on the meta device. Shared between recipes unless `fresh`: callers must not modify a shared one."""
    key = json.dumps(resolved.config, sort_keys=True)
    build = _build if fresh else _build_cached
    return build(key, resolved.name, task_type or "CAUSAL_LM", trust_remote_code)

