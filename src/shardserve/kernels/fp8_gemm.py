"""FP8 x FP8 matmul on Hopper tensor cores (torch._scaled_mm) for prefill-sized batches.

The weight is fp8 e4m3 with one float32 scale per output row (layers/quant.py); the activations
are quantised here per token (row), so out[t, n] = (sum_k xq[t, k] * wq[n, k]) * sx[t] * sw[n]
is computed by cuBLASLt's fp8 GEMM with row-wise scales, at twice the bf16 matmul rate. This is
W8A8: the activation rounding (3 mantissa bits) adds to the weight's, which is why it is used
only where the batch is compute-bound; decode batches stay weight-only (kernels/tuned_gemm.py).

`fp8_scaled_mm_reference` does the same quantisation and sums in float32: the definition the
GPU test checks torch._scaled_mm against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shardserve.kernels.gemm_kernels import device_facts
from shardserve.kernels.tuned_gemm import DECODE_MAX_TOKENS
from shardserve.kernels.weight_formats import dequantize, quantize_rows

FP8 = torch.float8_e4m3fn


def scaled_mm_applies(x: torch.Tensor, qweight: torch.Tensor) -> bool:
    """bf16 activations on an sm90+ GPU, a batch larger than decode sizes, and the multiples of
    16 that cuBLASLt's fp8 GEMM needs (K and N)."""
    return (
        x.is_cuda and x.dtype == torch.bfloat16 and qweight.dtype == FP8
        and x.numel() > DECODE_MAX_TOKENS * x.shape[-1]
        and x.shape[-1] % 16 == 0 and qweight.shape[0] % 16 == 0
        and device_facts(x.device)[1] >= (9, 0)
    )


def _quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, K] -> (xq [T, K] fp8, scale [T, 1] float32), per token."""
    xq, scale = quantize_rows(x, FP8)
    return xq, scale[:, None]


def fp8_scaled_mm(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] bf16, qweight [N, K] fp8, scale [N] float32 -> [..., N] bf16."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, x_scale = _quantize_tokens(x2)
    # qweight.t() is [K, N] column-major, the layout cuBLASLt wants for the second operand.
    out = torch._scaled_mm(xq, qweight.t(), scale_a=x_scale, scale_b=scale[None, :], out_dtype=x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], qweight.shape[0])


def fp8_scaled_mm_reference(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The same W8A8 product with float32 sums (any device)."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, x_scale = _quantize_tokens(x2)
    out = F.linear(xq.float() * x_scale, dequantize(qweight, scale, torch.float32))
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], qweight.shape[0])
