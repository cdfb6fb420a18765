"""GPU kernels, one per file, each next to the pure-torch reference it is tested against.

Layers call a fused kernel only where `use_fused_kernels(x)` says so: the tensor is on a CUDA
device, Triton is installed, and the engine has not switched fused kernels off (the "torch"
attention backend runs the pure-torch references end to end; EngineConfig.extra
{"fused_kernels": False} turns off only the small fused kernels, to measure what they buy).
"""

from __future__ import annotations

import importlib.util

import torch

_enabled = True
_has_triton = importlib.util.find_spec("triton") is not None


def set_fused_kernels(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def use_fused_kernels(x: torch.Tensor) -> bool:
    return _enabled and _has_triton and x.is_cuda


def norm_buffers(x: torch.Tensor, residual: torch.Tensor | None):
    """For the row-norm kernels (rms_norm.py, layer_norm.py) on x [T, dim]: (out, res_out,
    res_in, res_out_arg). out and res_out (the new residual stream, None without a residual) are
    fresh buffers, since the inputs may still be referenced; without a residual the kernel's
    residual arguments alias x and out (never read or written: HAS_RESIDUAL is off)."""
    assert x.dim() == 2 and x.stride(1) == 1
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if residual is None:
        return out, None, x, out
    assert residual.shape == x.shape and residual.stride(1) == 1 and residual.dtype == x.dtype
    res_out = torch.empty_like(out)
    return out, res_out, residual, res_out


def norm_row_launch(dim: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the one-program-per-row norm kernels over `dim` columns: the whole row
    in one block, 4 to 16 warps. parallel/reduce_norm_kernel.py launches its rows the same way, so
    that its row sums reduce in the same order and give the norm kernels' bits."""
    block = 1 << max(0, dim - 1).bit_length()  # triton.next_power_of_2 (Triton may be absent)
    return block, min(16, max(4, block // 512))
