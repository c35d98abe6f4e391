"""RC106: the recipe's model resolves to a config.json and builds on the meta device."""

from __future__ import annotations

from recipe_checks.models.resolve import ModelResolutionError
from recipe_checks.models.skeleton import ModelBuildError
from recipe_checks.rules.base import Rule


class ModelUnresolved(Rule):
    """
    ## What it checks
    The model resolves to a config.json without downloading weights (the recipe's `model.config`,
    a local directory, the huggingface_hub cache, the configs bundled with recipe-checks, or the hub
    with --recipes-allow-network), and transformers builds its architecture on the meta device.

    ## Why it matters
    The target-module and memory checks read the real module tree; without it they cannot run.

    ## Example
        model: meta-llama/Llama-3.1-8b-typo

    ## Use instead
        model: meta-llama/Llama-3.1-8B
        # or, for a private model:
        model: {id: my-org/my-model, config: configs/my-model/config.json}
    """

    id = "RC106"
    name = "model-unresolved"
    check = "schema"
    reads = frozenset({"model"})
    why = "the target-module and memory checks need the model's real architecture"

    def run(self, ctx):
        recipe = ctx.state.recipe
        if recipe is None:
            return
        model = ctx.state.meta_model()
        if isinstance(model, ModelResolutionError) or (isinstance(model, ModelBuildError) and model.rule_id == self.id):
            key = ("model", "config") if recipe.model.config else ("model",)
            if ("model", "id") in ctx.loaded.value_spans and not recipe.model.config:
                key = ("model", "id")
            yield self.finding(ctx, str(model), key, help=model.help)
