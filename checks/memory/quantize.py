"""bitsandbytes 4-bit layers on fake tensors: bitsandbytes' own Linear4bit, with an emulated Params4bit.

Params4bit cannot wrap a FakeTensor, so each quantized weight is a plain frozen Parameter with the
exact packed layout ((N*K+1)//2 x 1 uint8) carrying bitsandbytes' QuantState (absmax, and with double
quantization the 8-bit absmax, its fp32 second-level absmax, code and offset), so bitsandbytes'
forward and backward run unchanged. Which layers are quantized is transformers' own decision.
"""

from __future__ import annotations

import math

import torch

from recipe_checks import compat

NF4_CODE_SIZE = 16  # bitsandbytes' NF4/FP4 code books have 16 fp32 entries
DYNAMIC_CODE_SIZE = 256  # the 8-bit dynamic map that double quantization uses for absmax
NESTED_BLOCKSIZE = 256


def quant_state_for(shape: torch.Size, blocksize: int, quant_type: str, dtype: torch.dtype, nested: bool):
    """A bitsandbytes QuantState of fake tensors, shaped as functional.quantize_4bit builds it."""
    from bitsandbytes.functional import QuantState

    n = math.prod(shape)
    blocks = -(-n // blocksize)
    code = torch.empty(NF4_CODE_SIZE, dtype=torch.float32)
    if not nested:
        return QuantState(torch.empty(blocks, dtype=torch.float32), shape=shape, code=code,
                          blocksize=blocksize, quant_type=quant_type, dtype=dtype)
    state2 = QuantState(
        absmax=torch.empty(-(-blocks // NESTED_BLOCKSIZE), dtype=torch.float32),
        code=torch.empty(DYNAMIC_CODE_SIZE, dtype=torch.float32),
        blocksize=NESTED_BLOCKSIZE,
        quant_type=None,
        dtype=torch.float32,
    )
    return QuantState(torch.empty(blocks, dtype=torch.uint8), shape=shape, code=code, blocksize=blocksize,
                      quant_type=quant_type, dtype=dtype, offset=torch.empty((), dtype=torch.float32), state2=state2)


def quantize_model_4bit(model, quantization, compute_dtype: torch.dtype, real: bool = False, device: str = "cpu") -> int:
    """Replace the Linear layers transformers would quantize by bitsandbytes Linear4bit; return how many.

    `real`: quantize the model's actual weights with bitsandbytes' Params4bit (for validating the
    emulation on small models); otherwise emulate Params4bit with tensors of the same layout.
    """
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=quantization.bnb_4bit_use_double_quant,
        bnb_4bit_quant_storage=quantization.bnb_4bit_quant_storage or "uint8",
    )
    skip = compat.keys_to_not_convert(model) + list(quantization.llm_int8_skip_modules or [])
    originals = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    compat.replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=config)
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit) and real:
            weight = compat.quantize_on_cpu(bnb.nn.Params4bit(
                originals[name].weight.data.to(compute_dtype), requires_grad=False, blocksize=64,
                compress_statistics=quantization.bnb_4bit_use_double_quant,
                quant_type=quantization.bnb_4bit_quant_type, quant_storage=torch.uint8, module=module,
            ), device)
            originals[name].weight = None  # the unquantized weight is freed as each layer is quantized
            module.weight = weight
            module.quant_state = weight.quant_state
            if module.bias is not None:
                module.bias = torch.nn.Parameter(originals[name].bias.data.to(compute_dtype), requires_grad=False)
            count += 1
        elif isinstance(module, bnb.nn.Linear4bit):
            shape = torch.Size((module.out_features, module.in_features))
            packed = torch.empty(((math.prod(shape) + 1) // 2, 1), dtype=torch.uint8)
            weight = torch.nn.Parameter(packed, requires_grad=False)
            weight.quant_state = quant_state_for(
                shape, 64, quantization.bnb_4bit_quant_type, compute_dtype, quantization.bnb_4bit_use_double_quant
            )
            # the attributes of bitsandbytes' Params4bit that peft and bitsandbytes read
            weight.bnb_quantized = True
            weight.compress_statistics = quantization.bnb_4bit_use_double_quant
            weight.quant_type = quantization.bnb_4bit_quant_type
            weight.quant_storage = torch.uint8
            weight.blocksize = 64
            module.weight = weight
            module.quant_state = weight.quant_state
            if module.bias is not None:
                module.bias = torch.nn.Parameter(torch.empty(shape[0], dtype=compute_dtype), requires_grad=False)
            count += 1
    compat.keep_4bit_training_layout(model)
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    return count


def quantize_model_8bit(model, threshold: float, skip_modules: list, real: bool = False, device: str = "cpu") -> int:
    """Replace the Linear layers transformers would quantize for LLM.int8() by bitsandbytes
    Linear8bitLt; return how many. Frozen int8 weights (has_fp16_weights False, as for training
    adapters): the row-major int8 weight (CB) and its fp32 row scales (SCB). `real`: quantize the
    actual weights with bitsandbytes' Int8Params; otherwise tensors of the same layout."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    skip = compat.keys_to_not_convert(model) + list(skip_modules or [])
    originals = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    compat.replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=config)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear8bitLt):
            continue
        if real:
            weight = compat.quantize_on_cpu(bnb.nn.Int8Params(originals[name].weight.data, requires_grad=False,
                                                              has_fp16_weights=False), device)
        else:
            weight = torch.nn.Parameter(torch.empty((module.out_features, module.in_features), dtype=torch.int8),
                                        requires_grad=False)
            weight.CB = weight.data
            weight.SCB = torch.empty(module.out_features, dtype=torch.float32)
            weight.has_fp16_weights = False
        module.weight = weight
        if module.bias is not None:
            module.bias = torch.nn.Parameter(originals[name].bias.data.to(torch.float16) if real else
                                             torch.empty(module.out_features, dtype=torch.float16), requires_grad=False)
        module.init_8bit_state()  # state.CB and state.SCB, as the first forward would set them
        count += 1
    model.is_loaded_in_8bit = True
    model.is_quantized = True
    return count


# the attributes of bitsandbytes' Params4bit and Int8Params that peft and bitsandbytes read
BNB_PARAM_ATTRIBUTES = ("quant_state", "bnb_quantized", "compress_statistics", "quant_type", "quant_storage", "blocksize",
                        "CB", "SCB", "has_fp16_weights")


def quant_state_tensors(model) -> list[torch.Tensor]:
    """The tensors of every 4-bit layer's QuantState (absmax, nested absmax, codes, offsets) and
    every 8-bit layer's row scales (SCB)."""
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        scb = getattr(getattr(module, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            tensors.append(scb)
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:
            tensors.extend(t for t in (state.absmax, state.code, getattr(state, "offset", None)) if t is not None)
            state = getattr(state, "state2", None)
    return tensors
