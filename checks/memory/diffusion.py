"""A diffusion transformer's training step, as diffusers' FLUX LoRA scripts run it: the model built and
quantized by diffusers, adapters added with `add_adapter`, and the flow-matching loss on packed latents.

The scripts are examples/dreambooth/train_dreambooth_lora_flux.py and the QLoRA one,
examples/research_projects/flux_lora_quantization/train_dreambooth_lora_flux_miniature.py (diffusers 0.42):
NF4 through diffusers' BitsAndBytesConfig, `prepare_model_for_kbit_training(use_gradient_checkpointing=False)`,
`enable_gradient_checkpointing()`, `add_adapter(LoraConfig)`, LoRA weights cast to fp32 under fp16 only.
"""

from __future__ import annotations

from typing import Any

from recipe_checks import compat
from recipe_checks.library_warnings import quiet
from recipe_checks.memory.build import StepModel, lora_config
from recipe_checks.memory.errors import TraceError
from recipe_checks.memory.settings import StepSettings, thaw

# The FLUX VAE downsamples 8x; the transformer packs 2x2 latent patches into one token of
# in_channels (64: 16 latent channels x 4), FluxPipeline's vae_scale_factor and _pack_latents. The text
# inputs are sized by the transformer's config: joint_attention_dim (T5-XXL's 4096) and
# pooled_projection_dim (CLIP ViT-L/14's pooled 768).
VAE_SCALE_FACTOR = 8
TEXT_ID_DIMS = 3  # txt_ids and img_ids: (position, row, column) per token


def step_inputs(recipe, config: dict, notes: list[str]) -> dict[str, Any]:
    """What one step feeds the transformer, from the recipe's diffusion section."""
    from recipe_checks.models.diffusers import guidance_embeds

    diffusion = recipe.diffusion
    if diffusion is None:
        raise TraceError("a diffusion transformer's recipe needs a `diffusion` section: the image size "
                         "(resolution, or height and width) and the text length the step trains on")
    if not diffusion.cache_latents or not diffusion.precompute_text_embeddings:
        missing = [what for what, done in (("the VAE (cache_latents: false)", diffusion.cache_latents),
                                           ("the text encoders (precompute_text_embeddings: false)",
                                            diffusion.precompute_text_embeddings)) if not done]
        raise TraceError(f"{' and '.join(missing)} would stay on the GPU during the step, and recipe-checks traces "
                         "only the transformer's step: cache the latents and precompute the text embeddings "
                         "(as diffusers' flux_lora_quantization example does), or check the step on a GPU")
    if recipe.training.fp16 and recipe.lora is not None:
        notes.append("fp16: the adapters are cast to fp32 (diffusers' cast_training_params), as the FLUX scripts do")
    return {
        "height": diffusion.image_height,
        "width": diffusion.image_width,
        "text_tokens": diffusion.max_sequence_length,
        "guidance": guidance_embeds(config),
        "guidance_scale": diffusion.guidance_scale,
        "weighting_scheme": diffusion.weighting_scheme,
    }


def image_tokens(height: int, width: int) -> int:
    """Packed latent tokens of one image: (H/16) x (W/16)."""
    return (height // (2 * VAE_SCALE_FACTOR)) * (width // (2 * VAE_SCALE_FACTOR))


def build_diffusion_step_model(resolved, settings: StepSettings, *, real: bool = False, device: str = "cpu",
                               base=None) -> StepModel:
    """The transformer a diffusers FLUX LoRA script trains. Fake (the default): built on the meta device,
    then every tensor a fake CPU tensor. Real: real CPU tensors, really quantized (to validate the fake
    trace on small models). `base`: the real transformer as loaded (`from_pretrained`, cpu-step), else
    built from the config. Every block is traced (see docs/flux.md for the measured time)."""
    # imported here, not first in the traced step: importing it creates tensors, which the trace would count
    import diffusers.training_utils  # noqa: F401
    import torch

    from recipe_checks.memory.materialize import materialize_fake
    from recipe_checks.models.diffusers import build_diffusers_model

    weights_dtype = getattr(torch, settings.weights_dtype)
    quantized = 0
    with quiet():
        model = base if base is not None else build_diffusers_model(
            resolved.config, device=device if real else "meta", dtype=weights_dtype)
        if settings.quant_4bit:
            quantized = quantize_transformer_4bit(model, thaw(settings.quant_4bit), real=real, device=device)
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if settings.quant_8bit:
            raise TraceError("8-bit (LLM.int8()) FLUX transformers are not traced; use load_in_4bit (NF4), "
                             "as diffusers' QLoRA example does")
        model.requires_grad_(not settings.lora)
        if settings.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if settings.lora:
            model.add_adapter(lora_config(settings))
            if settings.precision == "float16":
                from diffusers.training_utils import cast_training_params

                cast_training_params(model, dtype=torch.float32)
        model.train()
    fake = None
    if not real:
        fake = compat.fake_tensor_mode()(allow_non_fake_inputs=True)
        materialize_fake(model, fake)
    return StepModel(model, fake, quantized, loss=flow_matching_loss)


def quantize_transformer_4bit(model, quant: dict, *, real: bool, device: str = "cpu") -> int:
    """Replace the Linear layers diffusers' bitsandbytes quantizer converts by bitsandbytes Linear4bit (its
    own `preprocess_model`, as `from_pretrained(quantization_config=...)` calls it); return how many.
    `real`: quantize the actual weights with Params4bit; otherwise tensors of its packed layout."""
    import math

    import bitsandbytes as bnb
    import torch
    from diffusers import BitsAndBytesConfig
    from diffusers.quantizers import DiffusersAutoQuantizer

    from recipe_checks.memory.quantize import quant_state_for

    compute_dtype = getattr(torch, quant["compute_dtype"])
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant["quant_type"], bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=quant["double_quant"], bnb_4bit_quant_storage=quant["quant_storage"],
        llm_int8_skip_modules=list(quant["skip"]) or None,
    )
    originals = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    quantizer = DiffusersAutoQuantizer.from_config(config)
    quantizer.preprocess_model(model, device_map=None, keep_in_fp32_modules=list(type(model)._keep_in_fp32_modules or []))
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        shape = torch.Size((module.out_features, module.in_features))
        if real:
            weight = compat.quantize_on_cpu(bnb.nn.Params4bit(
                originals[name].weight.data.to(compute_dtype), requires_grad=False, blocksize=64,
                compress_statistics=quant["double_quant"], quant_type=quant["quant_type"], quant_storage=torch.uint8,
                module=module,
            ), device)
        else:
            weight = torch.nn.Parameter(torch.empty(((math.prod(shape) + 1) // 2, 1), dtype=torch.uint8), requires_grad=False)
            weight.quant_state = quant_state_for(shape, 64, quant["quant_type"], compute_dtype, quant["double_quant"])
            for attr, value in (("bnb_quantized", True), ("compress_statistics", quant["double_quant"]),
                                ("quant_type", quant["quant_type"]), ("quant_storage", torch.uint8), ("blocksize", 64)):
                setattr(weight, attr, value)
        bias = originals[name].bias
        module.weight = weight
        module.quant_state = weight.quant_state
        if bias is not None:  # from_pretrained loads the bias in torch_dtype, the compute dtype in the scripts
            module.bias = torch.nn.Parameter(bias.data.to(compute_dtype), requires_grad=False)
        originals[name].weight = None
        count += 1
    compat.keep_4bit_training_layout(model)
    return count


def flow_matching_loss(model, settings: StepSettings, tracker):
    """One micro-batch of the FLUX scripts' training loop: cached latents noised along the flow-matching
    path, packed into tokens, the transformer's prediction unpacked and its MSE against noise - latents.
    The batch is what the loop's locals still hold during the backward: the latents, the noise, their
    noisy and packed forms, the text embeddings, ids, guidance, sigmas, the weighting and the target."""
    import torch
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    inputs = thaw(settings.diffusion)
    batch = settings.micro_batch
    dtype = getattr(torch, settings.precision)  # the scripts' weight_dtype: the mixed-precision dtype
    height, width = inputs["height"] // VAE_SCALE_FACTOR, inputs["width"] // VAE_SCALE_FACTOR
    text_tokens = inputs["text_tokens"]
    config = model.config
    latent_channels = config.in_channels // 4
    model_input = torch.randn((batch, latent_channels, height, width), dtype=dtype)  # a cached latent, sampled
    latent_image_ids = compat.flux_latent_image_ids(batch, height // 2, width // 2, model_input.device, dtype)
    noise = torch.randn_like(model_input)
    timesteps = torch.rand((batch,)) * 1000  # noise_scheduler.timesteps[indices], on the GPU
    sigmas = (timesteps / 1000).to(dtype).reshape(batch, 1, 1, 1)
    noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise
    packed = compat.flux_pack_latents(noisy_model_input, batch, latent_channels, height, width)
    guidance = torch.tensor([inputs["guidance_scale"]]).expand(batch) if inputs["guidance"] else None
    prompt_embeds = torch.randn((batch, text_tokens, config.joint_attention_dim), dtype=dtype)
    pooled_prompt_embeds = torch.randn((batch, config.pooled_projection_dim), dtype=dtype)
    text_ids = torch.zeros((text_tokens, TEXT_ID_DIMS), dtype=dtype)
    model_pred = model(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                       pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds,
                       txt_ids=text_ids, img_ids=latent_image_ids, return_dict=False)[0]
    tracker.segment = None
    tracker.region = "logits_loss"  # the loss on the prediction, as a causal LM's head and loss (run_step clears it)
    if model_pred.requires_grad:  # the loss's backward is done when the prediction's gradient is
        model_pred.register_hook(lambda grad: setattr(tracker, "region", ""))
    model_pred = compat.flux_unpack_latents(model_pred, height * VAE_SCALE_FACTOR, width * VAE_SCALE_FACTOR,
                                            VAE_SCALE_FACTOR)
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=inputs["weighting_scheme"], sigmas=sigmas)
    target = noise - model_input
    loss = torch.mean((weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(batch, -1), 1)
    held = (model_input, noise, timesteps, sigmas, noisy_model_input, packed, prompt_embeds, pooled_prompt_embeds,
            text_ids, latent_image_ids, guidance, weighting, target)
    return loss.mean(), held
