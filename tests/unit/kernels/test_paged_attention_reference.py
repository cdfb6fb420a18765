"""The torch reference of paged attention against plain dense attention (CPU).

The reference is the ground truth every GPU kernel is compared with (tests/gpu), so it gets an
independent check here: gather each sequence's keys by hand and run textbook causal attention.
"""

from __future__ import annotations

import pytest
import torch

from helpers.attention_cases import dense_causal_attention, make_case
from shardserve.kernels.paged_attention import paged_attention_reference, write_kv_cache


@pytest.mark.parametrize(
    "cached,q_lens,heads,kv_heads,alibi",
    [
        ([0, 0], [5, 17], 4, 4, False),  # fresh prompts, MHA
        ([20, 3, 0], [1, 1, 1], 4, 2, False),  # decode, GQA
        ([16, 7], [9, 1], 8, 2, True),  # cached prefix + chunk, mixed with a decode, ALiBi
        ([33], [31], 6, 1, False),  # MQA
    ],
)
def test_reference_matches_dense_attention(cached, q_lens, heads, kv_heads, alibi):
    case = make_case(cached, q_lens, num_heads=heads, num_kv_heads=kv_heads, alibi=alibi, block_size=8)
    out, k_cache, v_cache = case.expected()
    group = heads // kv_heads
    for i, seq_len in enumerate(case.seq_lens):
        blocks = case.block_tables[i, : -(-seq_len // 8)].long()
        k = k_cache[blocks].reshape(-1, kv_heads, 32)[:seq_len].repeat_interleave(group, dim=1)
        v = v_cache[blocks].reshape(-1, kv_heads, 32)[:seq_len].repeat_interleave(group, dim=1)
        a, b = case.query_start_loc[i], case.query_start_loc[i + 1]
        want = dense_causal_attention(case.query[a:b], k, v, case.scale, case.alibi_slopes)
        torch.testing.assert_close(out[a:b].double(), want, atol=1e-5, rtol=1e-5)


def test_write_kv_cache_skips_padding_slots():
    case = make_case([4], [3], padding_tokens=2)
    k_cache, v_cache = case.k_cache.clone(), case.v_cache.clone()
    write_kv_cache(case.key, case.value, k_cache, v_cache, case.slot_mapping)
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    for t, slot in enumerate(case.slot_mapping.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot], case.key[t])
    changed = (k_cache != case.k_cache).flatten(1).any(1).sum()
    assert int(changed) == 1  # the 3 real tokens share one block; padding wrote nothing


def test_reference_ignores_stale_block_ids_past_the_length():
    case = make_case([5], [1], block_size=4)
    out, k_cache, v_cache = case.expected()
    tables = case.block_tables.clone()
    tables[0, 2:] = 0  # entries past ceil(6 / 4) blocks must not matter
    again = paged_attention_reference(case.query, k_cache, v_cache, tables, case.query_start_loc, case.seq_lens, case.scale)
    torch.testing.assert_close(out[:1], again[:1])


@pytest.mark.parametrize(
    "cached,heads,kv_heads,alibi",
    [([20, 3, 0, 47], 4, 2, False), ([16, 1, 30], 8, 2, True), ([9, 64], 6, 1, False), ([5], 4, 4, True)],
)
def test_batched_decode_equals_the_reference(cached, heads, kv_heads, alibi):
    from shardserve.kernels.paged_attention import paged_decode_batched

    case = make_case(cached, [1] * len(cached), num_heads=heads, num_kv_heads=kv_heads, alibi=alibi, block_size=8)
    out, written_k, written_v = case.expected()
    # Everything outside the sequences' contexts is NaN, as uninitialised cache memory may be.
    k_cache, v_cache = torch.full_like(written_k, float("nan")), torch.full_like(written_v, float("nan"))
    for i, seq_len in enumerate(case.seq_lens):
        for p in range(seq_len):
            block, offset = int(case.block_tables[i, p // 8]), p % 8
            k_cache[block, offset], v_cache[block, offset] = written_k[block, offset], written_v[block, offset]
    got = paged_decode_batched(
        case.query, k_cache, v_cache, case.block_tables, torch.tensor(case.seq_lens, dtype=torch.int32),
        max(case.seq_lens), case.scale, case.alibi_slopes,
    )
    torch.testing.assert_close(got, out, atol=1e-5, rtol=1e-5)
