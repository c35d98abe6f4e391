"""RC107: remote model code is only run with the user's explicit opt-in."""

from __future__ import annotations

from checks.models.skeleton import ModelBuildError
from checks.rules.base import Rule


class RemoteCode(Rule):
    """
    ## What it checks
    A recipe that sets `model.trust_remote_code: true`, or whose model transformers only knows
    through the repository's own code, is built only when the user passes
    --recipes-trust-remote-code; recipe-checks never runs a repository's Python otherwise.

    ## Why it matters
    trust_remote_code executes arbitrary Python from the model repository on your machine and in
    your CI.

    ## Example
        model: {id: some-org/custom-arch, trust_remote_code: true}

    ## Use instead
    Review the code, then run `pytest --recipes-trust-remote-code`, or use a transformers-native port.
    """

    id = "RC107"
    name = "remote-code"
    check = "schema"
    why = "trust_remote_code runs arbitrary Python from the model repository"

    def run(self, ctx):
        recipe = ctx.state.recipe
        if recipe is None or not ctx.state.schema_ok:
            return
        if recipe.model.trust_remote_code and not ctx.state.options.trust_remote_code:
            yield self.finding(
                ctx,
                "the recipe asks to run the model repository's code (trust_remote_code), and this run did not allow it",
                ("model", "trust_remote_code"),
                help="review that code, then pass --recipes-trust-remote-code; or drop trust_remote_code "
                "if transformers supports the architecture natively",
            )
            return
        model = ctx.state.meta_model()
        if isinstance(model, ModelBuildError) and model.rule_id == self.id:
            yield self.finding(ctx, str(model), ("model",), help=model.help)
