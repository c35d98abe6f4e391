"""RC106: the recipe's model resolves to a config.json and builds on the meta device."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.models.resolve import ModelResolutionError
from recipe_checks.models.skeleton import ModelBuildError
from recipe_checks.rules.base import Rule


class ModelUnresolved(Rule):
    """
    ## What it checks
    The model resolves to a config.json without downloading weights (the recipe's `model.config`,
    a local directory, the huggingface_hub cache, the configs bundled with recipe-checks, or the hub
    with --recipes-allow-network), and transformers builds its architecture on the meta device.

    A model whose config.json is simply not here offline is a warning: the recipe is not wrong, its
    model-dependent checks are not run, and the help gives the command that caches the config
    (`hf download ID config.json`) or --recipes-allow-network; --recipes-strict fails it. A config that is
    there but unusable (a missing `model.config` file, a URL as the id, a config past the limits) is an
    error.

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
            not_here = isinstance(model, ModelResolutionError) and model.missing
            yield self.finding(ctx, str(model), key, help=model.help,
                               severity=Severity.WARNING if not_here else None,
                               why="the target-module and memory checks need the model's architecture; they are "
                                   "not run until its config.json is available" if not_here else None)
