"""What the paged-attention kernels (paged_decode, paged_prefill) share: on the device, reading
K/V tiles through a block table and the online-softmax update of flash attention; on the host,
the layout checks and the stride arguments both kernels take."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are scaled into base 2 (exp2)


def paged_out(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              out: torch.Tensor | None) -> torch.Tensor:
    """Check the layouts both kernels assume (contiguous caches, unit head-dim stride) and
    return the output buffer: `out`, or a new one like query."""
    assert query.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    return torch.empty_like(query) if out is None else out


def layout_args(query: torch.Tensor, k_cache: torch.Tensor, block_tables: torch.Tensor, out: torch.Tensor,
                scale: float) -> tuple:
    """Both kernels' stride arguments, in their order, and the softmax scale in base 2:
    query (token, head), cache (block, slot, head), block-table row, out (token, head)."""
    return (
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        scale * LOG2E,
    )


def dot_precision(dtype: torch.dtype) -> str:
    """float32 models keep float32 products (Triton would use tf32); half types use the MMA."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def load_kv_tile(
    k_cache_ptr, v_cache_ptr, bt_row, k_pos, k_mask, d, d_mask, kv_head,
    stride_c_block, stride_c_slot, stride_c_head, BLOCK_SIZE: tl.constexpr,
):
    """K and V [BLOCK_N, BLOCK_D] at key positions k_pos [BLOCK_N] of the sequence whose block
    table row starts at bt_row; masked rows/columns read as 0."""
    block = tl.load(bt_row + k_pos // BLOCK_SIZE, mask=k_mask, other=0).to(tl.int64)
    row = block * stride_c_block + (k_pos % BLOCK_SIZE) * stride_c_slot + kv_head * stride_c_head
    kv_mask = k_mask[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    """Fold one tile of base-2 scores s [M, N] (hidden keys = -inf) and values v [N, D] into
    the running row max m_i [M], row sum l_i [M] and unnormalised output acc [M, D]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc
