"""bitsandbytes' CUDA kernels as the trace runs them: which kernel runs on CUDA where the CPU runs
another, and the allocations of kernels whose fake implementation returns only the output.

The tracker hands each op in EMULATED to its function here, which runs the CUDA decomposition
and tracks each intermediate (ops called inside a dispatch bypass the tracker, so by hand, in order).
"""

from __future__ import annotations

import contextlib

import torch

from recipe_checks import compat
from recipe_checks.memory.experts import GROUPED_MM_OP, grouped_mm_as_on_cuda

# ops whose outputs are dequantized weights (the tracker's dequantized_weights category)
DEQUANTIZE_OPS = ("bitsandbytes::dequantize_4bit", "bitsandbytes::dequantize_blockwise")
# the ops the emulations call, checked to exist when an 8-bit or 4-bit model is traced
USED_OPS = ("dequantize_4bit", "dequantize_blockwise", "int8_vectorwise_quant", "int8_linear_matmul",
            "int8_mm_dequant")


def check_ops() -> None:
    """CompatError now, naming the op, if the installed bitsandbytes lacks one the emulation calls."""
    for name in USED_OPS:
        compat.bitsandbytes_op(name)


@contextlib.contextmanager
def int8_matmul_as_on_cuda():
    """bitsandbytes trains 8-bit layers on a CPU tensor with MatMul8bitFp (dequantize, then matmul);
    on CUDA, which the trace stands for, with MatMul8bitLt (int8 matmul)."""
    import bitsandbytes as bnb

    matmul_8bit_lt, matmul_lt_state = compat.int8_matmul_classes()
    original = bnb.matmul

    def matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        state = state or matmul_lt_state()
        if threshold > 0.0:
            state.threshold = threshold
        return matmul_8bit_lt.apply(A, B, out, bias, state)

    bnb.matmul = matmul
    try:
        yield
    finally:
        bnb.matmul = original


def gemm_4bit_as_cuda_fallback(tracker, A, B, shapeB, absmax, blocksize, quant_type, bias=None,
                               absmax_8bit=None, absmax_code=None, absmax_offset=None):
    """bitsandbytes::gemm_4bit (0.50 and later): on CUDA, bitsandbytes runs training-size matmuls (more
    than 1536 rows) as dequantize + F.linear (backends/cuda/ops.py: _dequant_linear_fallback); its fake
    kernel only returns the output, so run the same decomposition here."""
    region = tracker.region
    tracker.region = "dequantized_weights"
    try:
        if absmax_8bit is not None:
            nested = compat.bitsandbytes_op("dequantize_blockwise")(absmax_8bit, absmax, absmax_code, 256,
                                                                    torch.float32)
            tracker.track(nested)
            absmax = nested + absmax_offset
            tracker.track(absmax)
            del nested
        weight = compat.bitsandbytes_op("dequantize_4bit")(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
        tracker.track(weight)
        del absmax
    finally:
        tracker.region = region
    out = torch.nn.functional.linear(A, weight, bias)
    tracker.track(out)
    return out


# LLM.int8(): the outlier columns an input has depend on its values, which fake tensors do not
# have; the trace takes none (their fp16 slice, tokens x outlier columns, is not counted).
def int8_quant_without_outliers(tracker, A, threshold=0.0):
    out_row, row_stats, _ = compat.bitsandbytes_op("int8_vectorwise_quant")(A, 0.0)
    tracker.track(out_row, op="bitsandbytes::int8_vectorwise_quant")
    tracker.track(row_stats, op="bitsandbytes::int8_vectorwise_quant")
    outliers = torch.empty(0, dtype=torch.int64) if threshold > 0.0 else None
    return out_row, row_stats, outliers


def int8_mixed_scaled_mm_without_outliers(tracker, A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    sub_a = torch.empty(0, dtype=A.dtype)  # what bitsandbytes returns when there is no outlier
    tracker.track(sub_a, op="bitsandbytes::int8_mixed_scaled_mm")
    return int8_scaled_mm(tracker, CA, CB, SCA, SCB, bias=bias, dtype=A.dtype), sub_a


def int8_scaled_mm(tracker, A, B, row_stats, col_stats, bias=None, dtype=None):
    """bitsandbytes' kernel for every device: an int32 product, then the dequantized output."""
    product = compat.bitsandbytes_op("int8_linear_matmul")(A, B)
    tracker.track(product, op="bitsandbytes::int8_linear_matmul")
    out = compat.bitsandbytes_op("int8_mm_dequant")(product, row_stats, col_stats, dtype=dtype or torch.float16,
                                                    bias=bias)
    tracker.track(out, op="bitsandbytes::int8_mm_dequant")
    return out


EMULATED = {
    GROUPED_MM_OP: grouped_mm_as_on_cuda,  # MoE experts (checks/memory/experts.py)
    "bitsandbytes::gemm_4bit": gemm_4bit_as_cuda_fallback,
    "bitsandbytes::int8_vectorwise_quant": int8_quant_without_outliers,
    "bitsandbytes::int8_mixed_scaled_mm": int8_mixed_scaled_mm_without_outliers,
    "bitsandbytes::int8_scaled_mm": int8_scaled_mm,
}
