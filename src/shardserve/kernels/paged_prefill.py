"""Paged attention for prefill (and mixed) steps, in Triton: flash attention over the block table.

Reference: `shardserve.kernels.paged_attention.paged_attention_reference`.

The step's K/V are written to the cache first, so the keys of sequence i are read back through
its block table whether they were cached by an earlier step (prefix caching, chunked prefill)
or by this one; that one path serves fresh prompts, cached prefixes and decode tokens mixed into
a prefill batch. One program per (query tile, sequence, query head); the query at tile row j of
sequence i sits at position `seq_len - q_len + j` and sees keys up to it (causal).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels.paged_tiles import (
    dot_precision,
    layout_args,
    load_kv_tile,
    online_softmax_step,
    paged_out,
)


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_ptr, seq_lens_ptr, slopes_ptr,
    out_ptr,
    stride_q_t, stride_q_h,  # query [num_tokens, num_heads, head_dim]
    stride_c_block, stride_c_slot, stride_c_head,  # cache [num_blocks, block_size, kv_heads, dim]
    stride_bt,  # block_tables [num_seqs, max_blocks]
    stride_o_t, stride_o_h,  # out [num_tokens, num_heads, head_dim]
    scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    cached = seq_len - q_len  # keys already in the cache before this step's tokens
    kv_head = head // GROUP

    m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < q_len
    q_pos = cached + m
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_rows = (q_start + m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_q_t + head * stride_q_h + d[None, :],
        mask=m_mask[:, None] & d_mask[None, :], other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + head) * 1.4426950408889634

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_end = tl.minimum(seq_len, cached + (tile + 1) * BLOCK_M)  # last query of the tile sees this far
    for k_start in range(0, k_end, BLOCK_N):
        k_pos = k_start + tl.arange(0, BLOCK_N)
        k_mask = k_pos < k_end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, k_pos, k_mask, d, d_mask, kv_head,
                            stride_c_block, stride_c_slot, stride_c_head, BLOCK_SIZE)  # [BLOCK_N, BLOCK_D]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N]
        if HAS_ALIBI:
            s += slope * (k_pos[None, :] - q_pos[:, None]).to(tl.float32)
        visible = (k_pos[None, :] <= q_pos[:, None]) & k_mask[None, :]
        s = tl.where(visible, s, float("-inf"))  # key 0 is visible to every row: finite max
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

    out = acc / l_i[:, None]
    o = out_ptr + q_rows[:, None] * stride_o_t + head * stride_o_h + d[None, :]
    tl.store(o, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def paged_prefill_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim], this step's K/V written
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32 on the device
    seq_lens: torch.Tensor,  # [num_seqs] int32 on the device
    max_query_len: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32
    block_m: int = 64,
    block_n: int = 64,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    out = paged_out(query, k_cache, v_cache, out)
    num_seqs = seq_lens.shape[0]
    grid = (triton.cdiv(max_query_len, block_m), num_seqs, num_heads)
    _prefill_kernel[grid](
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
        alibi_slopes if alibi_slopes is not None else query,
        out,
        *layout_args(query, k_cache, block_tables, out, scale),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_ALIBI=alibi_slopes is not None, DOT_PRECISION=dot_precision(query.dtype),
        num_warps=4, num_stages=2,
    )
    return out
