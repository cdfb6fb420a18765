"""Batch invariance, chunked prefill, preemption and prefix caching."""

import pytest

from helpers.prompts import MIXED
from shardserve import LLM, SamplingParams

GREEDY = SamplingParams(max_new_tokens=24, min_new_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def alone(tiny_checkpoint):
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32") as llm:
        return [llm.generate([p], GREEDY)[0].token_ids for p in MIXED]


@pytest.mark.parametrize(
    "options",
    [
        dict(enable_chunked_prefill=False),
        dict(enable_chunked_prefill=True, max_num_batched_tokens=32),  # prompts split in chunks
        dict(max_num_seqs=3),  # requests join as others finish
        dict(num_kv_blocks=14, max_model_len=160),  # too few blocks for 8 at once: preemption
    ],
    ids=["no-chunking", "chunked", "few-seqs", "preemption"],
)
def test_each_request_alone_equals_in_a_batch_of_8(options, alone, tiny_checkpoint):
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", **options) as llm:
        outs = llm.generate(MIXED, GREEDY)
        assert [o.token_ids for o in outs] == alone
        if "num_kv_blocks" in options:
            assert llm.stats()["num_preemptions"] > 0, "no preemption happened"


def test_prefix_cache_reuses_blocks_and_keeps_output(tiny_checkpoint):
    shared = "The quick brown fox jumps over the lazy dog while the cat watches from the fence. " * 2
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", block_size=8) as llm:
        first = llm.generate([shared + "Then"], GREEDY)[0]
        second = llm.generate([shared + "Then"], GREEDY)[0]
        prefix_len = len(llm.tokenizer.encode(shared + "Then"))
        assert first.num_cached_tokens == 0
        # All full blocks but the last are reused (one token must be recomputed for logits).
        assert second.num_cached_tokens == ((prefix_len - 1) // 8) * 8
        assert second.num_cached_tokens >= 16
        assert second.token_ids == first.token_ids
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", block_size=8, enable_prefix_caching=False) as llm:
        llm.generate([shared], GREEDY)
        assert llm.generate([shared + "Then"], GREEDY)[0].num_cached_tokens == 0


def test_abort_frees_blocks(llama_llm):
    llm = llama_llm
    free_before = llm.scheduler.block_manager.num_free_blocks
    rid = llm.add_request(None, "a prompt to abort", SamplingParams(max_new_tokens=50))
    llm.step()
    assert llm.scheduler.block_manager.num_free_blocks < free_before
    out = llm.abort(rid)
    assert out.finished and out.finish_reason == "abort"
    assert llm.scheduler.block_manager.num_free_blocks == free_before
    assert not llm.has_unfinished()
