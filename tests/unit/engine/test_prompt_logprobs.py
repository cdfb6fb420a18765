"""Prompt logprobs (SamplingParams.prompt_logprobs, engine/prompt_logprobs.py): each prompt
token's logprob given the tokens before it, and the N most likely tokens at its position, as
transformers' full forward gives them, however the prompt is computed (chunks, row slices,
asynchronous steps, preemption, two ranks) and without changing any other request's output."""

from __future__ import annotations

import pytest
import torch

from helpers.prompts import MIXED
from helpers.reference_logprobs import hf_logprobs, token_logprobs
from shardserve import LLM, SamplingParams
from shardserve.engine import prompt_logprobs as prompt_logprobs_module
from shardserve.engine.sampling_params import MAX_TOP_LOGPROBS

LONG = "The quick brown fox jumps over the lazy dog. " * 3  # 64 tokens: several chunks and blocks
TOL = 2e-5  # float32 on both sides; the largest difference seen was 2e-6


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """(arch, prompt ids) -> transformers' float32 log_softmax [len(ids), vocab] of one forward."""
    return lambda arch, ids: hf_logprobs(tiny_checkpoint(arch), ids)


def assert_matches(out, logprobs: torch.Tensor, n: int) -> None:
    """`out`'s prompt logprobs are those of `logprobs` (a full forward's) for its prompt."""
    ids = out.prompt_token_ids
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(ids)
    assert out.prompt_logprobs[0] is None
    assert out.prompt_logprobs[1:] == pytest.approx(token_logprobs(logprobs, ids), abs=TOL)
    if not n:
        assert out.prompt_top_logprobs is None
        return
    assert len(out.prompt_top_logprobs) == len(ids) and out.prompt_top_logprobs[0] == []
    top = logprobs[:-1].topk(n, dim=-1)
    assert [[t for t, _ in row] for row in out.prompt_top_logprobs[1:]] == top.indices.tolist()
    for row, values in zip(out.prompt_top_logprobs[1:], top.values.tolist(), strict=True):
        assert [v for _, v in row] == pytest.approx(values, abs=TOL)


def mixed_params() -> list[SamplingParams]:
    """Every other MIXED prompt asks for prompt logprobs (N of 0, 2, 5, 20); all decode greedily."""
    top = iter((0, 2, 5, MAX_TOP_LOGPROBS))
    return [SamplingParams(max_new_tokens=6 + 3 * i, temperature=0.0, ignore_eos=True,
                           prompt_logprobs=None if i % 2 else next(top)) for i in range(len(MIXED))]


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_prompt_logprobs_and_top_tokens_equal_transformers(arch, tiny_checkpoint, reference):
    prompts = [*MIXED, [7]]  # and a one-token prompt: [None] alone
    with LLM(str(tiny_checkpoint(arch)), dtype="fp32") as llm:
        for n in (0, 5):
            outs = llm.generate(prompts, SamplingParams(max_new_tokens=1, temperature=0.0, prompt_logprobs=n))
            for out in outs:
                assert_matches(out, reference(arch, out.prompt_token_ids), n)
    assert outs[-1].prompt_logprobs == [None] and outs[-1].prompt_top_logprobs == [[]]


def test_every_output_of_a_request_shares_the_prompt_logprobs_built_once(tiny_checkpoint):
    """Built when the last row is in, not copied again for each of a long answer's outputs."""
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32") as llm:
        outs = list(llm.stream(MIXED[0], SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True,
                                                        prompt_logprobs=2)))
    assert len(outs) == 5 and len(outs[0].prompt_logprobs) == len(outs[0].prompt_token_ids)
    assert all(o.prompt_logprobs is outs[0].prompt_logprobs for o in outs)
    assert all(o.prompt_top_logprobs is outs[0].prompt_top_logprobs for o in outs)


@pytest.mark.parametrize("option", ["chunks", "row-slices"])
def test_chunked_prompts_and_small_row_slices_give_the_values_of_one_chunk(option, tiny_checkpoint, monkeypatch):
    model = str(tiny_checkpoint("llama"))
    params = SamplingParams(max_new_tokens=2, temperature=0.0, prompt_logprobs=4)
    prompts = [LONG, "x y z " * 20]
    with LLM(model, dtype="fp32") as llm:
        whole = llm.generate(prompts, params)
    if option == "row-slices":  # rows 5 at a time: slices that end inside a sequence's rows
        monkeypatch.setattr(prompt_logprobs_module, "ROWS_PER_SLICE", 5)
    budget = 16 if option == "chunks" else 2048  # chunks: a 64-token prompt over 4+ steps
    with LLM(model, dtype="fp32", max_num_batched_tokens=budget) as llm:
        split = llm.generate(prompts, params)
    for a, b in zip(whole, split, strict=True):
        assert min(len(a.prompt_token_ids), len(b.prompt_token_ids)) > 3 * 16
        assert b.prompt_logprobs[0] is None and b.prompt_logprobs[1:] == pytest.approx(a.prompt_logprobs[1:], abs=TOL)
        assert [[t for t, _ in r] for r in b.prompt_top_logprobs] == [[t for t, _ in r] for r in a.prompt_top_logprobs]
        assert b.token_ids == a.token_ids


def test_a_cached_prompt_still_gets_every_prompt_logprob(tiny_checkpoint, reference):
    """A request that asks for prompt logprobs takes no cache hit (its cached tokens would get no
    logits) but fills the cache for the requests that follow."""
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", block_size=8) as llm:
        params = SamplingParams(max_new_tokens=3, temperature=0.0, prompt_logprobs=3)
        first = llm.generate([LONG], params)[0]
        again = llm.generate([LONG], params)[0]
        plain = llm.generate([LONG], SamplingParams(max_new_tokens=3, temperature=0.0))[0]
    want = reference("llama", first.prompt_token_ids)
    for out in (first, again):
        assert_matches(out, want, 3)
        assert out.num_cached_tokens == 0
    assert plain.num_cached_tokens == (len(first.prompt_token_ids) - 1) // 8 * 8 > 0
    assert plain.prompt_logprobs is None and plain.token_ids == first.token_ids == again.token_ids


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(max_num_batched_tokens=16),
        dict(block_size=8, num_kv_blocks=30, max_model_len=160, max_num_batched_tokens=8),
    ],
    ids=["default", "chunked", "preemption"],
)
def test_requests_with_and_without_prompt_logprobs_batched_together(options, async_scheduling, tiny_checkpoint,
                                                                    reference):
    """Synchronous and asynchronous steps, whole and chunked prompts, and requests preempted in
    the middle of their prompt (their rows given to a step are not computed again, their
    positions' cached blocks are reused): every prompt logprob is transformers', and requests that
    ask for none get what they get in a batch where nobody asks."""
    model = str(tiny_checkpoint("llama"))
    params = mixed_params()
    with LLM(model, dtype="fp32", async_scheduling=async_scheduling, **options) as llm:
        preempted = _spy_on_preemptions(llm)
        outs = llm.generate(MIXED, params)
    plain_params = [SamplingParams(max_new_tokens=p.max_new_tokens, temperature=0.0, ignore_eos=True) for p in params]
    with LLM(model, dtype="fp32", async_scheduling=async_scheduling, **options) as llm:
        plain = llm.generate(MIXED, plain_params)
    for out, p, alone in zip(outs, params, plain, strict=True):
        assert out.token_ids == alone.token_ids
        if p.prompt_logprobs is None:
            assert out.prompt_logprobs is None and out.prompt_top_logprobs is None
        else:
            assert_matches(out, reference("llama", out.prompt_token_ids), p.prompt_logprobs)
    if "num_kv_blocks" in options:  # the case is what it says: preempted with rows still to come
        assert any(0 < rows < n - 1 for rows, n in preempted), preempted


def _spy_on_preemptions(llm: LLM) -> list[tuple[int, int]]:
    """(prompt-logprob rows given to steps, prompt length) of each preempted request that asks."""
    seen = []
    preempt = llm.scheduler._preempt

    def spy(request):
        if request.params.prompt_logprobs is not None:
            seen.append((request.num_prompt_logprob_rows, len(request.prompt_token_ids)))
        preempt(request)

    llm.scheduler._preempt = spy
    return seen


def test_a_step_with_prompt_logprob_rows_runs_eagerly_when_a_graph_could_run_it(tiny_checkpoint, reference):
    """The graphs compute each sequence's last row only. Here a stand-in graph (each sequence's last
    logits of an eager forward) is offered every step: a plain request's steps take it, steps
    holding prompt-logprob rows do not."""
    from helpers.prefill_cases import eager_logits

    with LLM(str(tiny_checkpoint("llama")), dtype="fp32") as llm:
        runner = llm.executor.runner
        ran = []

        class StandIn:
            def can_run(self, seqs):
                return True

            def run(self, seqs, block_size, fill):
                ran.append([s.request_id for s in seqs])
                return eager_logits(runner, seqs)

        runner.prefill_graphs = StandIn()
        plain = llm.generate([LONG], SamplingParams(max_new_tokens=1, temperature=0.0))[0]
        assert ran, "the stand-in graph is taken by steps without prompt-logprob rows"
        ran.clear()
        out = llm.generate([LONG], SamplingParams(max_new_tokens=1, temperature=0.0, prompt_logprobs=2))[0]
        assert ran == []
    assert_matches(out, reference("llama", out.prompt_token_ids), 2)
    assert out.token_ids == plain.token_ids


def test_two_ranks_equal_one_rank(tiny_checkpoint):
    """Every rank computes the rows' logits (an all_gather each slice), rank 0 returns them."""
    model = str(tiny_checkpoint("llama"))
    params = mixed_params()
    with LLM(model, dtype="fp32") as llm:
        want = llm.generate(MIXED, params)
    with LLM(model, dtype="fp32", tensor_parallel_size=2, async_scheduling=True, max_num_batched_tokens=16) as llm:
        got = llm.generate(MIXED, params)
    for a, b in zip(want, got, strict=True):
        assert b.token_ids == a.token_ids
        assert (a.prompt_logprobs is None) == (b.prompt_logprobs is None)
        if a.prompt_logprobs is not None:
            assert b.prompt_logprobs[1:] == pytest.approx(a.prompt_logprobs[1:], abs=1e-4)
            assert (b.prompt_top_logprobs is None) == (a.prompt_top_logprobs is None)
            if a.prompt_top_logprobs is not None:
                assert [[t for t, _ in r] for r in b.prompt_top_logprobs] == [[t for t, _ in r] for r in a.prompt_top_logprobs]


@pytest.mark.parametrize("value", [-1, MAX_TOP_LOGPROBS + 1, 2.5, True, "3"])
def test_invalid_prompt_logprobs_name_the_field(value):
    with pytest.raises(ValueError, match=rf"prompt_logprobs must be null or an integer in \[0, {MAX_TOP_LOGPROBS}\]"):
        SamplingParams(prompt_logprobs=value)


@pytest.mark.parametrize("value", [None, 0, MAX_TOP_LOGPROBS])
def test_valid_prompt_logprobs(value):
    assert SamplingParams(prompt_logprobs=value).prompt_logprobs == value
