"""Write a step's new K/V rows into the paged cache (Triton).

Reference: `shardserve.kernels.paged_attention.write_kv_cache`. Unlike the reference it never
reads `slot_mapping` on the host (no boolean indexing, so no device sync), which is what lets the
decode step run inside a CUDA graph whose padding rows carry slot -1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_CHUNK = 1024  # elements of one token's [num_kv_heads * head_dim] row per program


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_key_t, stride_value_t,  # token strides of key / value; heads x dim are contiguous
    row_elems,  # num_kv_heads * head_dim: one cache slot, contiguous in the cache layout
    CHUNK: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot < 0:  # padding token
        return
    offs = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    mask = offs < row_elems
    k = tl.load(key_ptr + token.to(tl.int64) * stride_key_t + offs, mask=mask)
    v = tl.load(value_ptr + token.to(tl.int64) * stride_value_t + offs, mask=mask)
    dst = slot * row_elems + offs
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache_triton(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]; rows may be strided (a qkv slice)
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; -1 = padding, skipped
) -> None:
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    key = _rows_contiguous(key)
    value = _rows_contiguous(value)
    row_elems = k_cache.shape[2] * k_cache.shape[3]
    grid = (num_tokens, triton.cdiv(row_elems, _CHUNK))
    _write_kv_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), value.stride(0), row_elems,
        CHUNK=_CHUNK,
    )


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Each token's heads x dim must be one contiguous run; the token stride may be anything."""
    if x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.contiguous()
