"""Paged attention over a block-table KV cache: the pure-torch reference.

This is both the CPU backend and the ground truth for the GPU kernels: any faster backend must
produce the same numbers on random inputs (tests/unit/kernels, tests/gpu).
"""

from __future__ import annotations

import torch


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = padding (skipped)
) -> None:
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, key[valid].to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, value[valid].to(v_cache.dtype))


def paged_attention_reference(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    query_start_loc: list[int],  # num_seqs + 1 offsets into query
    seq_lens: list[int],  # context length of each sequence, new tokens included
    scale: float,
    alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its whole cached context.

    The new tokens of sequence i are the last `q_len` positions of its `seq_len` context, so
    query j sits at position `seq_len - q_len + j` and sees keys 0..that position. Computed in
    float32, returned in the query dtype.
    """
    num_heads, head_dim = query.shape[1], query.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    for i, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        q_len = end - start
        if q_len == 0:
            continue
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = block_tables[i, :num_blocks].long()
        # [seq_len, num_kv_heads, head_dim]
        k = k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        v = v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        q = query[start:end].float()
        # [num_heads, q_len, seq_len]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        if alibi_slopes is not None:
            rel = (k_pos[None, :] - q_pos[:, None]).float()
            scores = scores + alibi_slopes.float()[:, None, None] * rel[None]
        scores = scores.masked_fill((k_pos[None, :] > q_pos[:, None])[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out


def paged_decode_batched(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]: one new token per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32 on the query's device
    max_seq_len: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference's decode case in a few batched ops instead of a loop over sequences.

    The CPU backend's decode path (a GPU runs kernels/paged_decode.py instead); same numbers as
    paged_attention_reference, checked in tests/unit/kernels. Every sequence's context is
    gathered to `max_seq_len` rows and the padding masked, so cost follows the longest one.
    """
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_blocks = (max_seq_len + block_size - 1) // block_size
    blocks = block_tables[:, :num_blocks].long()  # [num_seqs, num_blocks]
    # [num_seqs, max_seq_len, num_kv_heads, head_dim]
    k = k_cache[blocks].reshape(num_seqs, -1, num_kv_heads, head_dim)[:, :max_seq_len].float()
    v = v_cache[blocks].reshape(num_seqs, -1, num_kv_heads, head_dim)[:, :max_seq_len].float()
    q = query.float().view(num_seqs, num_kv_heads, group, head_dim)
    scores = torch.einsum("skgd,stkd->skgt", q, k) * scale  # [num_seqs, kv_heads, group, max_len]
    k_pos = torch.arange(max_seq_len, device=query.device)
    if alibi_slopes is not None:
        rel = (k_pos[None, :] - (seq_lens.long()[:, None] - 1)).float()  # [num_seqs, max_len]
        scores = scores + alibi_slopes.float().view(num_kv_heads, group)[None, :, :, None] * rel[:, None, None, :]
    padding = k_pos[None, :] >= seq_lens.long()[:, None]  # [num_seqs, max_len]
    probs = torch.softmax(scores.masked_fill(padding[:, None, None, :], float("-inf")), dim=-1)
    # Padding rows hold whatever the cache had there (uninitialised memory, even NaN): a zero
    # probability times NaN is NaN, so the values themselves are zeroed too.
    v = v.masked_fill(padding[:, :, None, None], 0.0)
    out = torch.einsum("skgt,stkd->skgd", probs, v)
    return out.reshape(num_seqs, num_heads, head_dim).to(query.dtype)
