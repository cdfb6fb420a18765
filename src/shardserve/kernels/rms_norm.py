"""RMSNorm in one kernel (Triton), optionally with the residual add before it; the reference is
the torch path of layers/norm.py `RMSNorm.forward`.

Same rounding as Hugging Face's LlamaRMSNorm: statistics in float32, the normalised row cast to
the input dtype, then multiplied by the weight in that dtype. One program per row replaces the
eight elementwise/reduction launches of the eager version, which at decode batch sizes cost
more than the row itself.

`fused_add_rms_norm` also folds in the residual add that precedes every norm of a pre-norm
decoder (vLLM's and TensorRT-LLM's fused add + RMSNorm): one read of each input, one write of
each output, one launch instead of two. The sum is rounded to the input dtype before the
statistics, as the unfused `x + residual` followed by the norm (and transformers) does, so the
fused path gives the same numbers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels import norm_buffers, norm_row_launch
from shardserve.kernels.pdl import pdl_args, pdl_entry


@triton.jit
def _rms_norm_row(x, w, n_cols, eps):
    """One row's RMSNorm: x [BLOCK] float32, zero past n_cols; w [BLOCK] in the output dtype ->
    w * (x / rms(x)) in that dtype. Also the row math of parallel/reduce_norm_kernel.py, which
    must give these bits."""
    inv_rms = tl.rsqrt(tl.sum(x * x, 0) / n_cols + eps)
    return w * (x * inv_rms).to(w.dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, stride_x, stride_res, stride_out, stride_res_out, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_entry(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    # Issued before the reduction (and before the residual store, which the compiler may not move
    # it across), so that at decode, where one row is all latency, the loads overlap.
    w = tl.load(w_ptr + cols, mask=mask)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the model dtype first: that rounded value is the new residual stream
        # and what the unfused path normalises.
        s = (x + r).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_res_out + cols, s, mask=mask)
        x = s.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, _rms_norm_row(x, w, n_cols, eps), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    assert weight.dtype == x.dtype
    out, res_out, res, r_out = norm_buffers(x, residual)
    if x.shape[0] == 0:
        return out, res_out
    block, num_warps = norm_row_launch(x.shape[1])
    _rms_norm_kernel[(x.shape[0],)](
        x, res, weight, out, r_out, x.stride(0), res.stride(0), out.stride(0), r_out.stride(0), x.shape[1], eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps, **pdl_args(x),
    )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, dim] (rows may be strided, columns contiguous), weight [dim] -> [T, dim]."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [T, dim] (same dtype; rows may be strided) -> (rms_norm(x + residual), x + residual)."""
    return _launch(x, residual, weight, eps)
