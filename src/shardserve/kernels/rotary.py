"""Neox-style rotary embedding of q and k in one kernel, in place (Triton).

Reference: layers/rotary.py `_rotate` (HF Llama's `q * cos + rotate_half(q) * sin`). cos/sin
are cast to the activation dtype first, as HF does; the products and the sum are then done in
float32 and rounded once (HF rounds after each product: the two differ by at most an ulp).
One program per token rotates all its q and k heads, replacing ~20 eager launches per layer.
The jit helpers below are also the rotation of kernels/kv_cache_write.py's fused rotary + cache
write, so the two give the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels.pdl import pdl_args, pdl_entry


@triton.jit
def _cos_sin(cos_ptr, sin_ptr, pos, stride_cs, act_ptr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """cos/sin [1, BLOCK_HALF] float32 of position `pos`, rounded to act_ptr's dtype first (as HF
    casts the float32 cache to the activation dtype)."""
    i = tl.arange(0, BLOCK_HALF)
    mask = i < HALF
    dtype = act_ptr.dtype.element_ty
    cos = tl.load(cos_ptr + pos * stride_cs + i, mask=mask, other=0.0).to(dtype).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + pos * stride_cs + i, mask=mask, other=0.0).to(dtype).to(tl.float32)[None, :]
    return cos, sin


@triton.jit
def _rotate(x1, x2, cos, sin):
    """Neox rotation of float32 halves (x1, x2) -> float32 (x1', x2'), one rounding later."""
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def _rotate_heads(x_ptr, cos, sin, num_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < num_heads) & (i < HALF)
    p1 = x_ptr + h * (2 * HALF) + i  # [BLOCK_H, BLOCK_HALF]: first half of each head
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
    o1, o2 = _rotate(x1, x2, cos, sin)
    dtype = x_ptr.dtype.element_ty
    tl.store(p1, o1.to(dtype), mask=mask)
    tl.store(p1 + HALF, o2.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, stride_q, stride_k, stride_cs, num_q_heads, num_k_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t)
    cos, sin = _cos_sin(cos_ptr, sin_ptr, pos, stride_cs, q_ptr, HALF, BLOCK_HALF)  # [1, BLOCK_HALF]
    _rotate_heads(q_ptr + t * stride_q, cos, sin, num_q_heads, HALF, BLOCK_QH, BLOCK_HALF)
    _rotate_heads(k_ptr + t * stride_k, cos, sin, num_k_heads, HALF, BLOCK_KH, BLOCK_HALF)


def rotary_inplace(
    positions: torch.Tensor,  # [T] int64
    q: torch.Tensor,  # [T, num_heads * head_dim], rows may be strided (a slice of qkv)
    k: torch.Tensor,  # [T, num_kv_heads * head_dim]
    cos_cache: torch.Tensor,  # [max_positions, head_dim / 2] float32
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    half = cos_cache.shape[1]
    assert q.stride(1) == 1 and k.stride(1) == 1 and cos_cache.is_contiguous() and sin_cache.is_contiguous()
    num_q_heads, num_k_heads = q.shape[1] // (2 * half), k.shape[1] // (2 * half)
    if q.shape[0]:
        _rotary_kernel[(q.shape[0],)](
            q, k, cos_cache, sin_cache, positions, q.stride(0), k.stride(0), cos_cache.stride(0),
            num_q_heads, num_k_heads,
            HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
            BLOCK_QH=triton.next_power_of_2(num_q_heads), BLOCK_KH=triton.next_power_of_2(num_k_heads),
            num_warps=4, **pdl_args(q),
        )
    return q, k
