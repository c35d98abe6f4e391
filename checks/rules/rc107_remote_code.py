"""RC107: remote model code is only run with the user's explicit opt-in."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.models.skeleton import ModelBuildError
from recipe_checks.rules.base import Rule


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

    A config whose `auto_map` names repository code but whose `model_type` transformers ships is
    checked against transformers' own class, never the repository's code; an info finding says so.
    """

    id = "RC107"
    name = "remote-code"
    check = "schema"
    reads = frozenset({"model"})
    why = "trust_remote_code runs arbitrary Python from the model repository"

    def run(self, ctx):
        recipe = ctx.state.recipe
        if recipe is None:
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
            return
        resolved = ctx.state.resolved_model()
        auto_map = getattr(resolved, "config", {}).get("auto_map")
        if auto_map and not isinstance(model, Exception):
            # transformers ships this model_type: its own class is built and the repository's code never runs
            yield self.finding(
                ctx,
                f"the config's auto_map points at the repository's own code; checked against transformers' "
                f"{type(model).__name__} for model_type '{resolved.model_type}' instead (no remote code was run)",
                ("model",), severity=Severity.INFO,
                help="",
            )
