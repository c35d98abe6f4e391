"""RC115: a diffusion transformer's recipe says what its step trains on (the diffusion section), and only such a recipe has one."""

from __future__ import annotations

from recipe_checks.models.diffusers import class_name, is_diffusers_config
from recipe_checks.rules.base import Rule


class DiffusionSection(Rule):
    """
    ## What it checks
    A recipe whose model is a diffusers transformer (FLUX.1-dev's `transformer` component) has a
    `diffusion` section with the image size (`resolution`, or `height` and `width`); a recipe whose
    model is a transformers language model has none.

    ## Why it matters
    A diffusion transformer's step is sized by the image, not by `training.max_seq_length`: FLUX
    trains on (H/16) x (W/16) latent tokens an image plus `max_sequence_length` T5 tokens. Without the
    size the memory check cannot trace the step; on a language model the section would be ignored
    silently.

    ## Example
        model: {id: black-forest-labs/FLUX.1-dev, component: transformer}
        training: {max_seq_length: 512}

    ## Use instead
        model: {id: black-forest-labs/FLUX.1-dev, component: transformer}
        diffusion: {height: 768, width: 512, max_sequence_length: 77, cache_latents: true,
                    precompute_text_embeddings: true}
    """

    id = "RC115"
    name = "diffusion-section"
    check = "schema"
    reads = frozenset({"model", "diffusion"})
    why = "a diffusion transformer's step is sized by its images, which only the diffusion section gives"

    def run(self, ctx):
        recipe = ctx.state.recipe
        resolved = ctx.state.resolved_model()
        if recipe is None or isinstance(resolved, Exception):
            return
        diffusers_model = is_diffusers_config(resolved.config)
        if diffusers_model and recipe.diffusion is None:
            yield self.finding(
                ctx, f"model '{recipe.model.name}' is a diffusers {class_name(resolved.config)} and the recipe has no "
                "diffusion section: the step's image size is unknown", ("model",),
                help="add diffusion: {resolution: 512} (or height and width), the text length (max_sequence_length) "
                     "and what is precomputed (cache_latents, precompute_text_embeddings)",
            )
        elif not diffusers_model and recipe.diffusion is not None:
            yield self.finding(
                ctx, f"the diffusion section is for diffusers transformers, and '{recipe.model.name}' is a "
                f"transformers {resolved.model_type} model: nothing reads it", ("diffusion",), at_value=False,
                help="remove the diffusion section; a language model's step is sized by training.max_seq_length",
            )
