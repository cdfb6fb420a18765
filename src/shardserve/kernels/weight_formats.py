"""How a linear layer's weight is stored, and what multiplying by it means (the definition every
kernel in kernels/gemm_kernels.py is tested against, and the CPU path).

Weights are [N, K] row-major:
  8-bit   int8 | float8_e4m3fn and one float32 scale per output row, W ~= weight * scale[:, None]
          (symmetric, per output channel): the quantised linear layers and an untied LM head.
  16-bit  the activation dtype (fp16 | bf16) and no scale: the unquantised linear layers and LM
          heads, and a tied LM head (the embedding table) in any case.
`quantize_rows` makes the 8-bit form (layers/quant.py, as a checkpoint loads); `linear_reference`
is one ordinary matmul by the weight in the activations' dtype. Needs torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}  # largest magnitude of each format


def quantize_rows(w: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """w [rows, cols] float -> (q [rows, cols] qdtype, scale [rows] float32), w ~= q * scale.

    Symmetric per row: scale = max|row| / QMAX, so the largest entry maps to +-QMAX. int8 rounds
    to the nearest integer (error <= scale / 2); fp8 e4m3 rounds to 3 mantissa bits (error <=
    |w| / 16, or scale / 1024 below its normal range). An all-zero row gets q = 0.
    """
    if qdtype not in QMAX:
        raise ValueError(f"quantization dtype must be int8 or float8_e4m3fn, got {qdtype}")
    w32 = w.float()
    scale = (w32.abs().amax(dim=1) / QMAX[qdtype]).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = w32 / scale[:, None]  # [rows, cols] in [-QMAX, QMAX]
    if qdtype == torch.int8:
        return scaled.round_().clamp_(-127, 127).to(torch.int8), scale
    return scaled.clamp_(-448.0, 448.0).to(qdtype), scale  # the cast rounds to nearest even


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] 8-bit + [N] float32 -> [N, K] `dtype` (the product is formed in float32)."""
    return (qweight.float() * scale[:, None]).to(dtype)


def linear_reference(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] -> [..., N] in x.dtype: one matmul by the weight in x's dtype (an 8-bit weight
    dequantised first, a 16-bit one as it is: then this is F.linear)."""
    return F.linear(x, weight.to(x.dtype) if scale is None else dequantize(weight, scale, x.dtype), bias)
