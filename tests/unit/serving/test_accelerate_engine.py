"""The Accelerate engine against our engine on the same tiny Llama: stop ids, log-probabilities
under penalties, min_p, logit_bias, and its life cycle (quantization refused, generate after
shutdown)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from helpers.checkpoints import EOS_ID
from helpers.min_p_gaps import assert_kept_by_min_p, assert_min_p_bites
from shardserve import LLM, SamplingParams
from shardserve.engine.request import Request
from shardserve.errors import EngineDeadError, ModelLoadError
from shardserve.serving.accelerate_engine import AccelerateEngine
from shardserve.serving.accelerate_sampling import sampling_key
from shardserve.serving.properties import ServingConfig


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def engines(llama):
    accelerate = AccelerateEngine(ServingConfig(name="t", artifact_dir=str(llama), dtype="fp32"), llama)
    ours = LLM(str(llama), dtype="fp32")
    yield accelerate, ours
    accelerate.shutdown()
    ours.shutdown()


def run(engine, prompt: str, params: SamplingParams):
    async def collect():
        return [out async for out in engine.generate(prompt, params)]

    return asyncio.run(collect())[-1]


@pytest.mark.parametrize("extra", [{}, {"min_new_tokens": 5}, {"repetition_penalty": 1.5, "logprobs": True},
                                   {"logprobs": True, "top_logprobs": 4}],
                         ids=["stop id", "stop id after min_new_tokens", "logprobs under a penalty", "top logprobs"])
def test_stop_ids_and_logprobs_as_our_engine(engines, extra):
    accelerate, ours = engines
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, **extra)
    free = ours.generate(["a long story"], greedy)[0]
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=[free.token_ids[2]],
                            **extra)
    want, got = ours.generate(["a long story"], params)[0], run(accelerate, "a long story", params)
    assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason)
    if params.logprobs:
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    if params.top_logprobs:
        assert [[t for t, _ in top] for top in got.top_logprobs] == [[t for t, _ in top] for top in want.top_logprobs]
        for mine, theirs in zip(got.top_logprobs, want.top_logprobs, strict=True):
            assert [v for _, v in mine] == pytest.approx([v for _, v in theirs], abs=1e-4)


@pytest.mark.parametrize("engine", ["accelerate", "ours"])
def test_min_p_keeps_draws_near_the_top_and_min_p_1_is_greedy(engines, engine):
    """At temperature T a token is kept when p_T >= min_p * max p_T, i.e. when its raw
    log-probability is within T * log(1 / min_p) of the top one's."""
    accelerate, ours = engines
    generate = (lambda p: run(accelerate, "a long story", p)) if engine == "accelerate" else (
        lambda p: ours.generate(["a long story"], p)[0])
    temperature = 3.0
    greedy = generate(SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True))

    def sampled(min_p: float, seed: int):
        return generate(SamplingParams(max_new_tokens=12, temperature=temperature, min_p=min_p, seed=seed,
                                       ignore_eos=True, logprobs=True, top_logprobs=1))

    assert [sampled(1.0, seed).token_ids for seed in (1, 2)] == [greedy.token_ids] * 2
    for seed in (1, 2, 3):
        assert_kept_by_min_p(sampled(0.5, seed), temperature, 0.5)
    assert_min_p_bites(sampled(0.0, 1), temperature, 0.5)


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.5, "presence_penalty": 0.5, "logprobs": True}],
                         ids=["bias", "bias after penalties"])
def test_logit_bias_gives_our_engines_tokens(engines, extra):
    """Greedy with a ban and a moderate boost (so both engines must add the same bias at the same
    place, after the penalties): the same tokens, and the model's own logprobs."""
    accelerate, ours = engines
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, **extra)
    free = ours.generate(["a long story"], greedy)[0]
    params = replace(greedy, logit_bias={free.token_ids[0]: -100.0, free.token_ids[3]: 3.0})
    want, got = ours.generate(["a long story"], params)[0], run(accelerate, "a long story", params)
    assert want.token_ids != free.token_ids and free.token_ids[0] not in want.token_ids
    assert got.token_ids == want.token_ids
    if params.logprobs:
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)


def test_min_new_tokens_beats_a_logit_bias_on_eos_in_both_engines(engines):
    accelerate, ours = engines
    params = SamplingParams(max_new_tokens=8, min_new_tokens=3, temperature=0.0, logit_bias={EOS_ID: 100.0})
    want, got = ours.generate(["a long story"], params)[0], run(accelerate, "a long story", params)
    assert len(want.token_ids) == 4 and want.token_ids[-1] == EOS_ID and want.finish_reason == "stop"
    assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason)


def test_requests_with_different_logit_biases_run_in_separate_generate_calls():
    def key(**kw):
        return sampling_key(Request("r", [1, 2], SamplingParams(temperature=0.0, **kw)))

    assert len({key(logit_bias={5: 1.0}), key(logit_bias={5: 2.0}), key(), key(logit_bias={6: 1.0})}) == 4
    assert key(logit_bias={5: 1.0, 6: -3}) == key(logit_bias=[(6, -3.0), (5, 1.0)])


def test_requests_that_differ_in_min_p_run_in_separate_generate_calls():
    def key(**kw):
        return sampling_key(Request("r", [1, 2], SamplingParams(**kw)))

    assert len({key(min_p=0.1), key(min_p=0.2), key()}) == 3
    assert key(temperature=0.0, min_p=0.1) == key(temperature=0.0)  # greedy: min_p is not used


def test_quantization_is_refused_by_name(llama):
    with pytest.raises(ModelLoadError, match="engine=Accelerate .*quantization 'int8'"):
        AccelerateEngine(ServingConfig(name="q", artifact_dir=str(llama), quantization="int8"), llama)


def test_generate_after_shutdown_fails_at_once(llama):
    engine = AccelerateEngine(ServingConfig(name="s", artifact_dir=str(llama), dtype="fp32"), llama)
    engine.shutdown()
    with pytest.raises(EngineDeadError, match="shut down"):
        asyncio.run(asyncio.wait_for(_first(engine), timeout=10))


async def _first(engine):
    async for out in engine.generate("hello", SamplingParams(max_new_tokens=2)):
        return out
