import pytest

from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.request import Request
from shardserve.engine.sampling_params import SamplingParams


def make_request(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(max_new_tokens=4))


def compute_all(bm: BlockManager, req: Request) -> None:
    assert bm.allocate(req, req.num_tokens - req.num_computed_tokens)
    req.num_computed_tokens = req.num_tokens
    bm.cache_full_blocks(req)


def test_allocation_counts_blocks_and_frees_them():
    bm = BlockManager(num_blocks=8, block_size=4)
    req = make_request("a", list(range(10)))
    assert bm.allocate(req, 10)
    assert len(req.block_ids) == 3 and bm.num_free_blocks == 5
    req.num_computed_tokens = 10
    assert bm.allocate(req, 2)  # 12 tokens still fit 3 blocks
    assert len(req.block_ids) == 3
    req.num_computed_tokens = 12
    assert bm.allocate(req, 1)
    assert len(req.block_ids) == 4
    bm.free(req)
    assert bm.num_free_blocks == 8 and req.block_ids == []


def test_allocation_fails_without_taking_blocks():
    bm = BlockManager(num_blocks=2, block_size=4)
    req = make_request("a", list(range(12)))
    assert not bm.allocate(req, 12)
    assert bm.num_free_blocks == 2 and req.block_ids == []


def test_prefix_blocks_are_shared_and_survive_free_until_evicted():
    bm = BlockManager(num_blocks=6, block_size=4)
    first = make_request("a", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    compute_all(bm, first)
    second = make_request("b", [5, 6, 7, 8, 9, 10, 11, 12, 99])
    hits = bm.find_cached_prefix(second, second.num_tokens)
    assert hits == first.block_ids[:2]
    assert bm.allocate(second, 1, hits)
    assert second.block_ids[:2] == first.block_ids[:2]
    assert bm.blocks[hits[0]].ref_count == 2
    bm.free(first)
    bm.free(second)
    # Freed but still cached: a third request reuses them.
    third = make_request("c", [5, 6, 7, 8, 9, 10, 11, 12, 1, 2])
    assert bm.find_cached_prefix(third, third.num_tokens) == hits
    # Allocating everything evicts the cached content.
    hog = make_request("d", list(range(100, 124)))
    assert bm.allocate(hog, 24)
    assert bm.find_cached_prefix(third, third.num_tokens) == []


def test_fully_cached_prompt_leaves_last_block_to_compute():
    bm = BlockManager(num_blocks=4, block_size=4)
    first = make_request("a", list(range(8)))
    compute_all(bm, first)
    again = make_request("b", list(range(8)))
    assert bm.find_cached_prefix(again, again.num_tokens) == first.block_ids[:1]


def test_hits_stop_at_the_token_limit_the_scheduler_gives():
    bm = BlockManager(num_blocks=8, block_size=4)
    first = make_request("a", list(range(13)))
    compute_all(bm, first)
    again = make_request("b", list(range(13)))
    assert bm.find_cached_prefix(again, 13) == first.block_ids[:3]
    assert bm.find_cached_prefix(again, 11) == first.block_ids[:2]  # whole blocks within the limit
    assert bm.find_cached_prefix(again, 3) == []
    assert bm.find_cached_prefix(again, 99) == first.block_ids[:3]  # no more than its tokens


def test_different_prefix_before_same_block_does_not_match():
    bm = BlockManager(num_blocks=8, block_size=2)
    compute_all(bm, make_request("a", [1, 2, 3, 4, 5]))
    assert bm.find_cached_prefix(make_request("b", [9, 9, 3, 4, 5]), 5) == []


def test_prefix_caching_off_finds_nothing():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    compute_all(bm, make_request("a", [1, 2, 3, 4, 5]))
    assert bm.find_cached_prefix(make_request("b", [1, 2, 3, 4, 5]), 5) == []


def test_needs_a_block():
    with pytest.raises(ValueError, match="at least 1 block"):
        BlockManager(num_blocks=0, block_size=4)


def test_token_slice_equals_slicing_all_tokens():
    req = make_request("a", [1, 2, 3, 4, 5])
    req.output_token_ids = [6, 7, 8]
    for start in range(9):
        for end in range(start, 9):
            assert req.token_slice(start, end) == req.all_token_ids[start:end]
