"""The Accelerate engine's prompt logprobs (SamplingParams.prompt_logprobs) against our engine's
on the same tiny checkpoints: one left-padded batch of prompts of different lengths, some asking
(N = 0 and N = 3) and some not, in the first output and every later one."""

from __future__ import annotations

import asyncio

import pytest

from helpers.prompts import MIXED
from shardserve import LLM, SamplingParams
from shardserve.engine.request import Request
from shardserve.serving import accelerate_prompt_logprobs
from shardserve.serving.accelerate_engine import AccelerateEngine
from shardserve.serving.properties import ServingConfig

TOL = 2e-5  # float32 on both sides


def accelerate(path, batch_size: int, delay_ms: float = 5000) -> AccelerateEngine:
    """An engine whose batch loop waits long enough to take `batch_size` requests as one batch."""
    config = ServingConfig(name="p", artifact_dir=str(path), dtype="fp32", batch_size=batch_size,
                           max_batch_delay_ms=delay_ms)
    return AccelerateEngine(config, path)


def run_together(engine, prompts, params, errors: bool = False) -> list:
    """Every output of each request, the requests sent at once (errors: or what it raised)."""
    async def collect(prompt, p):
        return [out async for out in engine.generate(prompt, p)]

    async def main():  # waits for every request: the loop stays open for all of them
        return await asyncio.gather(*(collect(x, p) for x, p in zip(prompts, params, strict=True)),
                                    return_exceptions=errors)

    return asyncio.run(main())


def mixed_params() -> list[SamplingParams]:
    """Prompt logprobs asked with N = 3, none, N = 0, none, ... (all greedy: one sampling group)."""
    asks = [3, None, 0, None]
    return [SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True,
                           prompt_logprobs=asks[i % len(asks)]) for i in range(len(MIXED))]


@pytest.mark.parametrize("arch", ["llama", "opt", "bloom"])
def test_prompt_logprobs_equal_our_engine_in_one_left_padded_batch(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    params = mixed_params()
    with LLM(str(path), dtype="fp32") as llm:
        want = llm.generate(MIXED, params)
    engine = accelerate(path, len(MIXED))
    groups = []
    run_group = engine._run
    engine._run = lambda group: (groups.append(len(group)), run_group(group))
    try:
        streams = run_together(engine, MIXED, params)
    finally:
        engine.shutdown()
    assert groups == [len(MIXED)]  # one generate call: the shorter prompts were left-padded
    assert len({len(w.prompt_token_ids) for w in want}) > 3
    for p, theirs, outs in zip(params, want, streams, strict=True):
        assert outs[-1].finished and len(outs) == 3  # the first output and two later ones
        assert outs[-1].prompt_token_ids == theirs.prompt_token_ids
        for out in outs:
            if p.prompt_logprobs is None:
                assert (out.prompt_logprobs, out.prompt_top_logprobs) == (None, None)
                continue
            assert len(out.prompt_logprobs) == len(theirs.prompt_logprobs) == len(theirs.prompt_token_ids)
            assert out.prompt_logprobs[0] is None
            assert out.prompt_logprobs[1:] == pytest.approx(theirs.prompt_logprobs[1:], abs=TOL)
            if not p.prompt_logprobs:
                assert out.prompt_top_logprobs is None
                continue
            assert out.prompt_top_logprobs[0] == [] and theirs.prompt_top_logprobs[0] == []
            assert [[t for t, _ in row] for row in out.prompt_top_logprobs] == [
                [t for t, _ in row] for row in theirs.prompt_top_logprobs]
            for mine, ref in zip(out.prompt_top_logprobs[1:], theirs.prompt_top_logprobs[1:], strict=True):
                assert len(mine) == 3
                assert [v for _, v in mine] == pytest.approx([v for _, v in ref], abs=TOL)


def test_position_slices_give_the_values_of_one_slice(tiny_checkpoint, monkeypatch):
    """Long prompts are read ROWS_PER_SLICE positions at a time; slices that end inside a prompt
    give the same values as one slice."""
    path = tiny_checkpoint("llama")
    engine = accelerate(path, 1)
    try:
        ids = engine.encode(MIXED[6], SamplingParams())
        whole, sliced = (Request(name, list(ids), SamplingParams(prompt_logprobs=4)) for name in "ab")
        accelerate_prompt_logprobs.fill_prompt_logprobs(engine.model, [whole])
        monkeypatch.setattr(accelerate_prompt_logprobs, "ROWS_PER_SLICE", 5)
        accelerate_prompt_logprobs.fill_prompt_logprobs(engine.model, [sliced])
    finally:
        engine.shutdown()
    assert len(ids) > 10 and len(whole.prompt_logprobs) == len(ids) - 1
    assert sliced.prompt_logprobs == whole.prompt_logprobs
    assert sliced.prompt_top_logprobs == whole.prompt_top_logprobs


def test_a_failing_prompt_logprob_forward_fails_its_request_alone(tiny_checkpoint, monkeypatch):
    """A long prompt's logits may not fit: that request fails, the others of its group go on."""
    path = tiny_checkpoint("llama")
    engine = accelerate(path, 2, delay_ms=1000)

    def fail(model, request):
        raise RuntimeError("CUDA out of memory (raised by the test)")

    monkeypatch.setattr(accelerate_prompt_logprobs, "_fill", fail)
    try:
        params = [SamplingParams(max_new_tokens=2, prompt_logprobs=1), SamplingParams(max_new_tokens=2)]
        failed, served = run_together(engine, ["in the beginning", "one two"], params, errors=True)
        out = run_together(engine, ["one two"], [SamplingParams(max_new_tokens=2, prompt_logprobs=0)],
                           errors=True)[0]
    finally:
        engine.shutdown()
    assert isinstance(failed, RuntimeError) and "prompt logprobs failed: RuntimeError: CUDA out of memory" in str(failed)
    assert served[-1].finished and len(served[-1].token_ids) == 2
    assert isinstance(out, RuntimeError)  # the engine still serves, and still fails only such requests
