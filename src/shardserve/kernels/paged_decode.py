"""Paged attention for decode steps (one new token per sequence), in Triton.

Reference: `shardserve.kernels.paged_attention.paged_attention_reference` with every q_len = 1.

One program per (sequence, KV head, split): the query heads that share a KV head (GQA group)
are packed as the rows of one tile, so each K/V block is read once per group. A sequence's
context is divided among `num_splits` programs (flash-decoding) so that a batch of a few
sequences still fills the GPU; their partial softmaxes are merged by a second small kernel.
(Merging inside the decode kernel instead, by the last split program to finish, saves that
launch but serialises the merge behind the slowest split: on 4x H200 it measured within run-to-
run noise of this kernel pair, OPT-30B TP4 5.54 vs 5.62 ms/step and Llama-3-8B 4.27 vs 4.25, so
the simpler pair stays.)

Nothing here reads a host value that changes from step to step: context lengths come from
`seq_lens` on the device and the split count depends only on the batch shape, so the launch can
be captured in a CUDA graph and replayed for any lengths. Padding sequences (seq_len 0) output 0.
"""

from __future__ import annotations

import functools

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
from shardserve.kernels.pdl import pdl_args, pdl_entry

_MAX_SPLITS = 16


@triton.jit
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, slopes_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr,
    stride_q_t, stride_q_h,  # query [num_seqs, num_heads, head_dim]
    stride_c_block, stride_c_slot, stride_c_head,  # cache [num_blocks, block_size, kv_heads, dim]
    stride_bt,  # block_tables [num_seqs, max_blocks]
    stride_o_t, stride_o_h,  # out [num_seqs, num_heads, head_dim]
    scale_log2,  # softmax scale * log2(e): the softmax runs in base 2
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr,  # query heads per KV head, padded to >= 16 for tl.dot
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,  # cache block size; keys per iteration
    NUM_SPLITS: tl.constexpr, HAS_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    pdl_entry(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_heads = tl.num_programs(1) * GROUP
    seq_len = tl.load(seq_lens_ptr + seq)

    # This split's keys: a run of whole BLOCK_N tiles, so splits never share a tile.
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    g = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + g
    g_mask = g < GROUP
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_q_t + heads[:, None] * stride_q_h + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :], other=0.0,
    )  # [BLOCK_G, BLOCK_D]
    if HAS_ALIBI:
        slopes = tl.load(slopes_ptr + heads, mask=g_mask, other=0.0) * 1.4426950408889634

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for k_start in range(start, end, BLOCK_N):
        k_pos = k_start + tl.arange(0, BLOCK_N)
        k_mask = k_pos < end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, k_pos, k_mask, d, d_mask, kv_head,
                            stride_c_block, stride_c_slot, stride_c_head, BLOCK_SIZE)  # [BLOCK_N, BLOCK_D]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2  # [BLOCK_G, BLOCK_N] f32
        if HAS_ALIBI:
            # The query sits at seq_len - 1; ALiBi adds slope * (key pos - query pos).
            s += slopes[:, None] * (k_pos - (seq_len - 1)).to(tl.float32)[None, :]
        s = tl.where(k_mask[None, :], s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION)

    out_mask = g_mask[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty context (padding) -> 0
        o = out_ptr + seq * stride_o_t + heads[:, None] * stride_o_h + d[None, :]
        tl.store(o, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # Partials: acc [num_seqs, num_heads, NUM_SPLITS, BLOCK_D], (m, l) [.., NUM_SPLITS, 2].
        base = (seq * num_heads + heads) * NUM_SPLITS + split  # [BLOCK_G]
        tl.store(part_acc_ptr + base[:, None] * BLOCK_D + d[None, :], acc, mask=out_mask)
        tl.store(part_ml_ptr + base * 2, m_i, mask=g_mask)
        tl.store(part_ml_ptr + base * 2 + 1, l_i, mask=g_mask)


@triton.jit
def _merge_splits_kernel(
    part_acc_ptr, part_ml_ptr, out_ptr, stride_o_t, stride_o_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, PDL: tl.constexpr,
):
    pdl_entry(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    base = (seq * tl.num_programs(1) + head) * NUM_SPLITS
    s = tl.arange(0, NUM_SPLITS)
    m = tl.load(part_ml_ptr + (base + s) * 2)  # [NUM_SPLITS]; -inf for an empty split
    l_sum = tl.load(part_ml_ptr + (base + s) * 2 + 1)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # 0 for empty splits
    denom = tl.sum(w * l_sum, 0)
    d = tl.arange(0, BLOCK_D)
    acc_ptrs = part_acc_ptr + (base + s)[:, None] * BLOCK_D + d[None, :]  # [NUM_SPLITS, BLOCK_D]
    if HEAD_DIM < BLOCK_D:  # the decode kernel never writes the columns past the head
        acc = tl.load(acc_ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
    else:
        acc = tl.load(acc_ptrs)
    out = tl.sum(acc * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + seq * stride_o_t + head * stride_o_h + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 128


def default_num_splits(num_seqs: int, num_kv_heads: int, device: torch.device) -> int:
    """Enough programs to cover every SM about once; depends on the batch shape only (graphs)."""
    sms = _sm_count(device)
    splits = triton.cdiv(sms, max(num_seqs * num_kv_heads, 1))
    return min(_MAX_SPLITS, triton.next_power_of_2(splits)) if splits > 1 else 1


def paged_decode_attention(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]: one new token per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32 on the device; 0 = padding
    scale: float,
    alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32
    num_splits: int | None = None,
    block_n: int = 64,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    out = paged_out(query, k_cache, v_cache, out)
    if num_splits is None:
        num_splits = default_num_splits(num_seqs, num_kv_heads, query.device)
    assert num_splits & (num_splits - 1) == 0, "num_splits must be a power of two"
    block_d = triton.next_power_of_2(head_dim)
    if num_splits > 1:
        part_acc = torch.empty(num_seqs, num_heads, num_splits, block_d, dtype=torch.float32, device=query.device)
        part_ml = torch.empty(num_seqs, num_heads, num_splits, 2, dtype=torch.float32, device=query.device)
    else:
        part_acc = part_ml = out  # unused
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens,
        alibi_slopes if alibi_slopes is not None else query,
        out, part_acc, part_ml,
        *layout_args(query, k_cache, block_tables, out, scale),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_N=block_n,
        NUM_SPLITS=num_splits, HAS_ALIBI=alibi_slopes is not None,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=4, num_stages=2, **pdl_args(query),
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_seqs, num_heads)](
            part_acc, part_ml, out, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits, num_warps=4, **pdl_args(query),
        )
    return out
