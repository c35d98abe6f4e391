"""RC112: a YAML file that speaks another tool's vocabulary is recognised as that tool's config, or says why not."""

from __future__ import annotations

from recipe_checks.rules.base import Rule


class ForeignConfigUnrecognised(Rule):
    """
    ## What it checks
    A file with no top-level `model` key that uses the keys of an Axolotl, LLaMA-Factory or TRL config
    (three or more) is recognised as one: it has the key that names the model (`base_model` for Axolotl,
    `model_name_or_path` for LLaMA-Factory and TRL) and a key only that tool uses. A file forced to a
    format (`--recipes-format`) that cannot be translated is reported here too.
    A config of a kind that is no recipe (recipe_checks.formats.kinds: an accelerate or DeepSpeed config, a
    torchtune, ai-toolkit or LLaMA-Factory v1 config), named on the command line, gets one note saying what it
    is and how it is checked instead: an info for accelerate and DeepSpeed (checked through the recipe that
    names them), a warning for the training configs not read yet. A directory search leaves such files out.

    ## Why it matters
    A config that is neither a recipe nor a recognised config would be checked as nothing at all: a
    flood of unknown keys, or silence, instead of one line saying what is missing.

    ## Example
        base_model_config: meta-llama/Meta-Llama-3-8B    # base_model itself is missing
        adapter: lora
        micro_batch_size: 2

    ## Use instead
        base_model: meta-llama/Meta-Llama-3-8B
        adapter: lora
        micro_batch_size: 2
    """

    id = "RC112"
    name = "foreign-config-unrecognised"
    check = "schema"
    why = "a config that is not recognised would be checked as nothing at all"

    def run(self, ctx):
        error = ctx.state.load_error  # made when the file was read (recipe_checks.formats.read_as_native)
        if error is not None and error.rule_id == self.id:
            yield error
