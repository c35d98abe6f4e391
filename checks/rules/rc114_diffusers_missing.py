"""RC114: a diffusers model's recipe is checked where diffusers (the diffusers extra) is installed."""

from __future__ import annotations

from recipe_checks.models.skeleton import ModelBuildError
from recipe_checks.rules.base import Rule


class DiffusersMissing(Rule):
    """
    ## What it checks
    A recipe whose model is a diffusers component (a config.json with `_class_name`, such as
    FLUX.1-dev's `transformer`) is checked with diffusers installed: recipe-checks builds the model
    with diffusers' own class. diffusers is an optional extra, imported only for such recipes.

    ## Why it matters
    Without diffusers the model cannot be built, so the target-module and memory checks of the
    recipe cannot run; they are skipped, and this finding says why and what to install.

    ## Example
        model: {id: black-forest-labs/FLUX.1-dev, component: transformer}
        # checked where `import diffusers` fails

    ## Use instead
        pip install 'recipe-checks[diffusers]'
    """

    id = "RC114"
    name = "diffusers-missing"
    check = "schema"
    reads = frozenset({"model"})
    why = "the target-module and memory checks of a diffusers model need diffusers to build it"

    def run(self, ctx):
        if ctx.state.recipe is None:
            return
        model = ctx.state.meta_model()
        if isinstance(model, ModelBuildError) and model.rule_id == self.id:
            yield self.finding(ctx, str(model), ("model",), help=model.help)
