"""The Accelerate engine against our engine on the same tiny Llama: stop ids, log-probabilities
under penalties, and its life cycle (quantization refused, generate after shutdown)."""

from __future__ import annotations

import asyncio

import pytest

from shardserve import LLM, SamplingParams
from shardserve.errors import EngineDeadError, ModelLoadError
from shardserve.serving.accelerate_engine import AccelerateEngine
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
