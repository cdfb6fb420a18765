"""Asynchronous scheduling: step n+1 is scheduled and launched before step n's tokens are known
(placeholders filled in on the device). Whatever the batch does, every request must end exactly
as it does with synchronous steps: tokens, text, finish reason, logprobs."""

from __future__ import annotations

import pytest

from helpers.prompts import MIXED
from shardserve import LLM, SamplingParams


def _params() -> list[SamplingParams]:
    """One kind of request per prompt: greedy of several lengths, EOS allowed, stop strings,
    seeded sampling with logprobs, repetition penalties, min_new_tokens (all batch-invariant).
    The penalty below 1 makes the tiny model repeat its newest token, which is in flight when the
    next one is sampled: a penalty that missed it would change the output at once."""
    return [
        SamplingParams(max_new_tokens=9, temperature=0.0, repetition_penalty=0.5),
        SamplingParams(max_new_tokens=30, temperature=0.0, stop=["the", "e"]),
        SamplingParams(max_new_tokens=17, temperature=0.8, top_p=0.9, seed=7, logprobs=True, repetition_penalty=1.2),
        SamplingParams(max_new_tokens=1, temperature=0.0),
        SamplingParams(max_new_tokens=25, temperature=0.0, repetition_penalty=1.3),
        SamplingParams(max_new_tokens=20, min_new_tokens=12, temperature=1.0, top_k=5, seed=3),
        SamplingParams(max_new_tokens=40, temperature=0.0, logprobs=True),
        SamplingParams(max_new_tokens=12, temperature=0.0, stop=[" "]),
    ]


def _run(model, async_scheduling: bool, **options):
    with LLM(model, dtype="fp32", async_scheduling=async_scheduling, **options) as llm:
        outs = llm.generate(MIXED, _params())
    return [(o.token_ids, o.text, o.finish_reason, o.logprobs) for o in outs]


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(max_num_batched_tokens=32),  # chunked prompts: steps that sample nothing
        dict(max_num_seqs=3),  # requests join as others finish
        dict(num_kv_blocks=14, max_model_len=160),  # preemption with tokens in flight
    ],
    ids=["default", "chunked", "few-seqs", "preemption"],
)
def test_async_steps_end_every_request_as_sync_steps_do(options, tiny_checkpoint):
    model = str(tiny_checkpoint("llama"))
    sync = _run(model, False, **options)
    overlapped = _run(model, True, **options)
    for (tokens, text, reason, lp), (a_tokens, a_text, a_reason, a_lp) in zip(sync, overlapped, strict=True):
        assert (a_tokens, a_text, a_reason) == (tokens, text, reason)
        assert (lp is None) == (a_lp is None)
        if lp is not None:
            assert a_lp == pytest.approx(lp, abs=1e-5)
    reasons = {r for _, _, r, _ in sync}
    assert len(reasons) > 1, f"the workload should end requests in several ways, got {reasons}"


@pytest.mark.parametrize("penalty", [1.0, 1.3], ids=["plain", "repetition-penalty"])
def test_async_steps_launch_before_the_last_tokens_are_read(penalty, tiny_checkpoint):
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", async_scheduling=True) as llm:
        calls = []
        call = llm.executor.call

        def spy(method, *args):
            calls.append(method)
            return call(method, *args)

        llm.executor.call = spy
        llm.add_request("a", "in the beginning", SamplingParams(max_new_tokens=6, temperature=0.0, repetition_penalty=penalty))
        first = llm.step()  # the prefill is launched; nothing is known yet
        assert first == []
        outs = []
        while llm.has_unfinished():
            outs.append(llm.step())
        # Each step launched the next before reading the last (a penalty drains nothing): one token
        # per step, and only the step after the last launch waits for what is in flight.
        assert calls == ["execute_model_async"] * 6 + ["collect"]
        assert [[len(o.token_ids) for o in step] for step in outs] == [[1], [2], [3], [4], [5], [6]]
        assert outs[-1][0].finished


def test_a_penalty_counts_the_token_in_flight(tiny_checkpoint):
    """The second token is sampled while the first is in flight, unknown to the host; a penalty
    below 1 favours every token seen, and this model then repeats the first."""
    params = SamplingParams(max_new_tokens=4, temperature=0.0, repetition_penalty=0.5)
    model = str(tiny_checkpoint("llama"))
    outs = []
    for async_scheduling in (False, True):
        with LLM(model, dtype="fp32", async_scheduling=async_scheduling) as llm:
            outs.append(llm.generate(["a"], params)[0])
    sync, overlapped = outs
    assert sync.token_ids[0] not in sync.prompt_token_ids and sync.token_ids[1] == sync.token_ids[0]
    assert overlapped.token_ids == sync.token_ids


def test_a_request_that_fills_the_model_length_gets_every_token(tiny_checkpoint):
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", max_model_len=40, async_scheduling=True) as llm:
        prompt = llm.tokenizer.encode("in the beginning")
        n = 40 - len(prompt)
        out = llm.generate([prompt], SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))[0]
    assert len(out.token_ids) == n and out.finish_reason == "length"


def test_abort_and_id_reuse_while_a_step_is_in_flight(tiny_checkpoint):
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", async_scheduling=True) as llm:
        want = llm.generate(["one two"], params)[0].token_ids
        llm.add_request("r", "in the beginning", params)
        llm.step()
        llm.step()  # the first token is known, the second in flight
        assert llm.abort("r").finished
        llm.add_request("r", "one two", params)  # same id, new request
        outs = []
        while llm.has_unfinished():
            outs += [o for o in llm.step() if o.request_id == "r"]
        assert outs[-1].finished and outs[-1].token_ids == want
        assert llm.scheduler.block_manager.num_free_blocks == llm.scheduler.block_manager.num_blocks


def test_prefix_cache_with_tokens_in_flight(tiny_checkpoint):
    prompt = "The quick brown fox jumps over the lazy dog while the cat watches. " * 2
    params = SamplingParams(max_new_tokens=20, temperature=0.0)
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", block_size=8, async_scheduling=True) as llm:
        first = llm.generate([prompt], params)[0]
        # The second prompt reuses the first's prompt and output blocks, hashed while in flight.
        again = llm.generate([list(first.prompt_token_ids) + first.token_ids[:17]], SamplingParams(max_new_tokens=3, temperature=0.0))[0]
    assert again.num_cached_tokens == (len(first.prompt_token_ids) + 16) // 8 * 8
    assert again.token_ids == first.token_ids[17:20]
