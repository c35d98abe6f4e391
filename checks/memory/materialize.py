"""Fake materialisation: a model built on the meta device gets a fake CPU tensor for every parameter,
buffer and quantization state tensor, so that its step runs under FakeTensorMode without memory.
"""

from __future__ import annotations

from typing import Any

from recipe_checks import compat


def materialize_fake(model, fake) -> None:
    """Replace every meta parameter, buffer and 4-bit quant state tensor by a fake CPU tensor."""
    import torch

    from recipe_checks.memory.quantize import BNB_PARAM_ATTRIBUTES

    done: dict[int, Any] = {}

    def convert(t):
        if id(t) not in done:
            with fake:
                new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            if isinstance(t, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
                for attr in BNB_PARAM_ATTRIBUTES:
                    if hasattr(t, attr):
                        setattr(new, attr, getattr(t, attr))
            done[id(t)] = new
        return done[id(t)]

    for module in model.modules():
        parameters, buffers = compat.tensor_slots(module)
        for name, param in list(parameters.items()):
            if param is not None:
                parameters[name] = convert(param)
        for name, buf in list(buffers.items()):
            if buf is not None:
                buffers[name] = convert(buf)
        state = getattr(module, "quant_state", None)
        while state is not None:
            for attr in ("absmax", "code", "offset"):
                value = getattr(state, attr, None)
                if isinstance(value, torch.Tensor):
                    setattr(state, attr, convert(value))
            state = getattr(state, "state2", None)
        int8_state = getattr(module, "state", None)
        if getattr(int8_state, "CB", None) is not None:  # LLM.int8(): CB is the weight's own storage
            int8_state.CB = module.weight.data
            int8_state.SCB = convert(int8_state.SCB)
