"""Write a step's new K/V rows into the paged cache (Triton).

Reference: `shardserve.kernels.paged_attention.write_kv_cache`. Unlike the reference it never
reads `slot_mapping` on the host (no boolean indexing, so no device sync), which is what lets the
decode step run inside a CUDA graph whose padding rows carry slot -1.

`rotary_write_kv_cache_triton` fuses the rotary embedding in front of the write (one launch
instead of kernels/rotary.py's `rotary_inplace` then `write_kv_cache_triton`): it rotates q in
place and writes the rotated k, and v, into the cache, with the same arithmetic and casts as
those two kernels, so q and the cache come out bit for bit the same. Positions and slots are read
on the device only, as the decode CUDA graph needs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels.pdl import pdl_args, pdl_entry
from shardserve.kernels.rotary import _cos_sin, _rotate, _rotate_heads

_CHUNK = 1024  # elements of one token's [num_kv_heads * head_dim] row per program


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_key_t, stride_value_t,  # token strides of key / value; heads x dim are contiguous
    row_elems,  # num_kv_heads * head_dim: one cache slot, contiguous in the cache layout
    CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_entry(PDL)
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
        CHUNK=_CHUNK, **pdl_args(key),
    )


@triton.jit
def _rotary_write_kv_kernel(
    q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr,
    stride_q_t, stride_k_t, stride_v_t, stride_cs,  # token strides; heads x dim are contiguous
    num_q_heads, num_kv_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    # Grid (tokens, 2): program (t, 0) rotates token t's q heads in place, program (t, 1)
    # rotates its k heads into the cache and copies its v heads there, so the two halves of a
    # token's work (the q half is the larger) run side by side even at batch 1.
    t = tl.program_id(0).to(tl.int64)
    if tl.program_id(1) == 0:
        # Every row, padding included: the attention kernels read q of padding rows (and
        # ignore their output), as they read the rows rotary_inplace rotated.
        pos = tl.load(pos_ptr + t)
        cos, sin = _cos_sin(cos_ptr, sin_ptr, pos, stride_cs, q_ptr, HALF, BLOCK_HALF)
        _rotate_heads(q_ptr + t * stride_q_t, cos, sin, num_q_heads, HALF, BLOCK_QH, BLOCK_HALF)
    else:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:  # slot -1: a padding row, nothing written
            pos = tl.load(pos_ptr + t)
            # Cast to q's dtype, as rotary_inplace does for both q and k.
            cos, sin = _cos_sin(cos_ptr, sin_ptr, pos, stride_cs, q_ptr, HALF, BLOCK_HALF)
            h = tl.arange(0, BLOCK_KH)[:, None]
            i = tl.arange(0, BLOCK_HALF)[None, :]
            mask = (h < num_kv_heads) & (i < HALF)
            offs = h * (2 * HALF) + i  # [BLOCK_KH, BLOCK_HALF]: first half of each head
            dst = slot * (num_kv_heads * 2 * HALF) + offs  # one slot = [num_kv_heads, head_dim]
            k_row = k_ptr + t * stride_k_t
            x1 = tl.load(k_row + offs, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(k_row + offs + HALF, mask=mask, other=0.0).to(tl.float32)
            o1, o2 = _rotate(x1, x2, cos, sin)
            # Rounded to k's dtype (what rotary_inplace stores), then to the cache's (the write).
            k_dtype = k_ptr.dtype.element_ty
            kc_dtype = k_cache_ptr.dtype.element_ty
            tl.store(k_cache_ptr + dst, o1.to(k_dtype).to(kc_dtype), mask=mask)
            tl.store(k_cache_ptr + dst + HALF, o2.to(k_dtype).to(kc_dtype), mask=mask)
            v_row = v_ptr + t * stride_v_t
            vc_dtype = v_cache_ptr.dtype.element_ty
            v1 = tl.load(v_row + offs, mask=mask)
            v2 = tl.load(v_row + offs + HALF, mask=mask)
            tl.store(v_cache_ptr + dst, v1.to(vc_dtype), mask=mask)
            tl.store(v_cache_ptr + dst + HALF, v2.to(vc_dtype), mask=mask)


def rotary_write_kv_cache_triton(
    positions: torch.Tensor,  # [num_tokens] int64, on the device
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]; rotated in place; rows may be strided
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]; left as it is (rotated into the cache)
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; -1 = padding, skipped
    cos_cache: torch.Tensor,  # [max_positions, head_dim / 2] float32 (layers/rotary.py)
    sin_cache: torch.Tensor,
) -> torch.Tensor:
    """Neox rotary of q and k plus the cache write of k and v, in one launch. Returns query."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    half = cos_cache.shape[1]
    assert head_dim == 2 * half and key.shape[2] == value.shape[2] == head_dim
    assert tuple(k_cache.shape[2:]) == (num_kv_heads, head_dim) and k_cache.shape == v_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert cos_cache.is_contiguous() and sin_cache.is_contiguous()
    # q is rotated in place, so it cannot be made contiguous behind the caller's back.
    assert query.stride(2) == 1 and query.stride(1) == head_dim, "q heads x dim must be contiguous"
    if num_tokens == 0:
        return query
    key = _rows_contiguous(key)
    value = _rows_contiguous(value)
    _rotary_write_kv_kernel[(num_tokens, 2)](
        query, key, value, k_cache, v_cache, cos_cache, sin_cache, positions, slot_mapping,
        query.stride(0), key.stride(0), value.stride(0), cos_cache.stride(0),
        num_heads, num_kv_heads,
        HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_QH=triton.next_power_of_2(num_heads), BLOCK_KH=triton.next_power_of_2(num_kv_heads),
        num_warps=4, **pdl_args(query),
    )
    return query


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Each token's heads x dim must be one contiguous run; the token stride may be anything."""
    if x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.contiguous()
