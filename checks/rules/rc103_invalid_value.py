"""RC103: every value has the type and range its key takes."""

from __future__ import annotations

import re

from recipe_checks.limits import shorten
from recipe_checks.rules.base import Rule

_NUMBER_LIKE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class InvalidValue(Rule):
    """
    ## What it checks
    Each value has the right type (no quoted numbers or booleans) and a range that makes sense:
    a batch size of at least 1, a LoRA rank of at least 1, a dropout in [0, 1), a positive learning
    rate, a known torch dtype and attention implementation, a reason for every ignored rule.

    ## Why it matters
    TrainingArguments accepts a negative batch size and a learning rate of "2e-4" as a string; the
    mistake then surfaces as a crash or a silent no-op hours later, on the GPU.

    ## Example
        training:
          per_device_train_batch_size: -1
          learning_rate: 2e-4          # PyYAML reads this as the string "2e-4"
        lora:
          target_modules: "(\\w+)*_proj"   # nested repeats: exponential backtracking

    ## Use instead
        training:
          per_device_train_batch_size: 1
          learning_rate: 2.0e-4
        lora:
          target_modules: [q_proj, v_proj]
    """

    id = "RC103"
    name = "invalid-value"
    check = "schema"
    why = "a wrong type or an impossible value fails on the GPU, or trains something other than intended"

    def run(self, ctx):
        validation = ctx.state.validation
        if validation is None:
            return
        for problem in validation.invalid_values:
            key = shorten(".".join(str(p) for p in problem.key_path if not isinstance(p, int)) or "the recipe")
            shown = _show(problem.value)
            message = f"{key}: {problem.message[0].lower()}{problem.message[1:]}"
            if problem.error_type != "missing":
                message += f" (got {shown})"
            yield self.finding(ctx, message, problem.key_path, help=_help(problem))


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_REGEX_KEYS = ("target_modules", "exclude_modules", "layers_pattern", "rank_pattern", "alpha_pattern")
_LIMIT_TYPES = ("less_than_equal", "less_than", "too_long")


def _help(problem) -> str:
    value = problem.value
    if "regex" in problem.message and set(problem.key_path) & set(_REGEX_KEYS):
        return (
            "list the module names instead (target_modules: [q_proj, v_proj]), or write a regex without nested "
            r"or overlapping repeats and with at most 3 unbounded ones, e.g. '.*\.(q_proj|v_proj)'"
        )
    if problem.error_type == "finite_number" or "finite number" in problem.message:
        return "write a finite number: .inf and .nan are not values any setting takes"
    if problem.error_type in _LIMIT_TYPES or "at most" in problem.message or "more than the" in problem.message:
        return "use a value within the range real training runs take (see 'Limits on input' in the README)"
    if isinstance(value, str) and _NUMBER_LIKE.match(value.strip()):
        if "e" in value.lower() and "." not in value:
            mantissa, _, exponent = value.lower().partition("e")
            if exponent[:1] not in "+-":
                exponent = "+" + exponent  # PyYAML's float also needs the exponent's sign
            mantissa = mantissa if "." in mantissa else mantissa + ".0"
            return (
                f"PyYAML reads '{value}' as a string (YAML 1.1 needs a dot in a float): "
                f"write {mantissa}e{exponent}"
            )
        return f"remove the quotes: {value}"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return f"remove the quotes: {value.lower()}"
    if problem.key_path == ("model",):
        return "model takes a hub id (meta-llama/Llama-3.1-8B) or a mapping {id, config, revision, torch_dtype, ...}"
    if problem.error_type == "missing":
        return "add the key"
    if problem.error_type == "literal_error":
        return "use one of the values listed"
    if problem.error_type == "bool_type":
        return "write true or false"
    return "fix the value to the type and range the key takes"
