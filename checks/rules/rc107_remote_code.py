"""RC107: remote model code is only run with the user's explicit opt-in."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.limits import shorten
from recipe_checks.models.resolve import ModelResolutionError, ResolvedModel
from recipe_checks.models.skeleton import ModelBuildError, remote_code_in
from recipe_checks.rules.base import Rule


class RemoteCode(Rule):
    """
    ## What it checks
    A recipe that sets `model.trust_remote_code: true` for a model whose config.json would make
    transformers run the repository's own Python (an `auto_map`, or a model_type transformers does
    not ship) is an error unless the user passes --recipes-trust-remote-code; a model transformers
    only knows through that code is never built without it. recipe-checks itself never runs a
    repository's Python: it checks transformers' own class for the model_type, or reports it cannot.

    Where the config has no auto_map and transformers ships its model_type (Llama 3, Qwen2,
    Mixtral), trust_remote_code changes nothing: transformers runs no repository code, and an info
    finding says so. A model whose config cannot be found offline is not checked here (RC106 says so).
    The tokenizer's own tokenizer_config.json auto_map is not seen: only config.json is resolved.

    ## Why it matters
    trust_remote_code executes arbitrary Python from the model repository on your machine and in
    your CI.

    ## Example
        model: {id: Qwen/Qwen-7B, trust_remote_code: true}   # auto_map: modeling_qwen.QWenLMHeadModel

    ## Use instead
    Review the code, then run `pytest --recipes-trust-remote-code`, or use a transformers-native port
    and drop trust_remote_code.

    A config whose `auto_map` names repository code but whose `model_type` transformers ships is
    checked against transformers' own class, never the repository's code; under trust_remote_code an
    info finding says so, since training would run the repository's version.
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
        asked = recipe.model.trust_remote_code
        resolved = ctx.state.resolved_model()
        if isinstance(resolved, ModelResolutionError):
            return  # nothing is known of what would run: RC106 reports the unresolved model
        remote = remote_code_in(resolved.config)
        if asked and remote is None:
            yield self.finding(
                ctx,
                f"trust_remote_code has no effect: model '{shorten(resolved.name)}' has no auto_map and its "
                f"{_architecture(resolved)} is one the library ships, so no repository code would run",
                ("model", "trust_remote_code"), severity=Severity.INFO,
                why="transformers runs a repository's code only for a config with an auto_map or a model_type it lacks",
                help="drop trust_remote_code, so that a later model that ships its own code is not run unreviewed",
            )
        elif asked and not ctx.state.options.trust_remote_code:
            yield self.finding(
                ctx,
                "the recipe asks to run the model repository's code (trust_remote_code), and this run did not allow it: "
                f"model '{shorten(resolved.name)}': {remote}",
                ("model", "trust_remote_code"),
                help="review that code, then pass --recipes-trust-remote-code; or drop trust_remote_code "
                "if transformers supports the architecture natively",
            )
            return
        model = ctx.state.meta_model()
        if isinstance(model, ModelBuildError) and model.rule_id == self.id:
            yield self.finding(ctx, str(model), ("model",), help=model.help)
            return
        auto_map = resolved.config.get("auto_map")
        if asked and auto_map and not isinstance(model, Exception):
            # transformers ships this model_type: its own class is built and the repository's code never runs
            yield self.finding(
                ctx,
                f"the config's auto_map points at the repository's own code; checked against transformers' "
                f"{type(model).__name__} for model_type '{resolved.model_type}' instead (no remote code was run)",
                ("model",), severity=Severity.INFO,
                help="",
            )


def _architecture(resolved: ResolvedModel) -> str:
    if resolved.model_type:
        return f"model_type '{shorten(resolved.model_type)}'"
    return "diffusers class"  # a diffusers component (FLUX's transformer) has a class name, no model_type
