"""LayerNorm in one Triton program per row, optionally with the residual add before it; the
reference is the torch path of layers/norm.py `LayerNorm.forward` (F.layer_norm). Same arithmetic
as PyTorch's CUDA kernel: statistics and the affine transform in float32, one rounding to the
output dtype at the end.

Why: at decode batch sizes PyTorch's kernel runs one block per row (4 rows of OPT-30B's 7168:
12.7 us on an H200, 97 times a step = 1.2 ms of a 9 ms TP4 step); here a row is a single
program of 16 warps and takes about 2 us. `fused_add_layer_norm` also folds in the residual add
that precedes the norm (one launch instead of two); the sum is rounded to the input dtype before
the statistics, as the unfused `x + residual` followed by the norm does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels import norm_buffers, norm_row_launch
from shardserve.kernels.pdl import pdl_args, pdl_entry


@triton.jit
def _layer_norm_row(x, w, b, mask, n_cols, eps):
    """One row's LayerNorm in float32 (the caller rounds it): x, w, b [BLOCK] float32, x zero
    where mask is off (past n_cols). Also the row math of parallel/reduce_norm_kernel.py, which
    must give these bits."""
    mean = tl.sum(x, 0) / n_cols
    centered = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(centered * centered, 0) / n_cols + eps)  # biased variance, as torch
    return centered * rstd * w + b


@triton.jit
def _layer_norm_kernel(
    x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, res_out_ptr, stride_x, stride_res, stride_out, stride_res_out, n_cols,
    eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_entry(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    # Issued before the reduction (and before the residual store, which the compiler may not move
    # them across), so that at decode, where one row is all latency, the loads overlap.
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the model dtype first: the new residual stream, and what is normalised.
        s = (x + r).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_res_out + cols, s, mask=mask)
        x = s.to(tl.float32)
    normed = _layer_norm_row(x, w, b, mask, n_cols, eps)
    tl.store(out_ptr + row * stride_out + cols, normed.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    out, res_out, res, r_out = norm_buffers(x, residual)
    if x.shape[0] == 0:
        return out, res_out
    block, num_warps = norm_row_launch(x.shape[1])
    _layer_norm_kernel[(x.shape[0],)](
        x, res, weight, bias, out, r_out, x.stride(0), res.stride(0), out.stride(0), r_out.stride(0), x.shape[1],
        eps, HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps, **pdl_args(x),
    )
    return out, res_out


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, dim] (rows may be strided, columns contiguous), weight/bias [dim] -> [T, dim]."""
    return _launch(x, None, weight, bias, eps)[0]


def fused_add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [T, dim] (same dtype; rows may be strided) -> (layer_norm(x + residual), x + residual)."""
    return _launch(x, residual, weight, bias, eps)
