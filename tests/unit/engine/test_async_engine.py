import asyncio

import pytest

from shardserve import AsyncEngine, EngineConfig, OutputKind, SamplingParams
from shardserve.errors import EngineDeadError


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    eng = AsyncEngine(EngineConfig(model=str(tiny_checkpoint("llama")), dtype="fp32"))
    yield eng
    eng.shutdown()


async def collect(engine, prompt, params, request_id=None):
    return [out async for out in engine.generate(prompt, params, request_id)]


def test_concurrent_streams_match_sync_results(engine, llama_llm):
    prompts = ["the cat", "a dog ran", "hello world"]
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=0.0)
    expected = [o.token_ids for o in llama_llm.generate(prompts, params)]

    async def main():
        return await asyncio.gather(*(collect(engine, p, params) for p in prompts))

    results = asyncio.run(main())
    for outs, want in zip(results, expected):
        assert outs[-1].finished and outs[-1].token_ids == want
        assert "".join(o.delta_text for o in outs) == outs[-1].text
        assert sum(len(o.delta_token_ids) for o in outs) == 12


def test_cancelled_consumer_aborts_and_frees_blocks(engine):
    async def main():
        gen = engine.generate("a long story", SamplingParams(max_new_tokens=200, ignore_eos=True))
        first = await gen.__anext__()
        assert not first.finished
        await gen.aclose()  # what a client disconnect does
        for _ in range(100):
            await asyncio.sleep(0.02)
            if engine.stats()["num_running"] == 0 and engine.stats()["kv_cache_usage"] == 0.0:
                return True
        return False

    assert asyncio.run(main())


def test_abort_by_id_finishes_the_stream(engine):
    async def main():
        outs = []
        async for out in engine.generate("abort me", SamplingParams(max_new_tokens=200, ignore_eos=True), "rid-1"):
            outs.append(out)
            if len(outs) == 2:
                await engine.abort("rid-1")
        return outs

    outs = asyncio.run(main())
    assert outs[-1].finished and outs[-1].finish_reason == "abort"


def test_invalid_request_raises_before_streaming(engine):
    async def main():
        return await collect(engine, "x " * 400, SamplingParams(max_new_tokens=5))

    with pytest.raises(ValueError, match="max_model_len"):
        asyncio.run(main())


def test_a_request_id_reused_after_a_cancel_gets_only_its_own_updates(engine):
    """The old request's late updates and its abort go to the old request, not the new one."""
    quick = SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True)

    async def main():
        expected = await collect(engine, "the cat", quick)
        gen = engine.generate("a long story", SamplingParams(max_new_tokens=200, ignore_eos=True), "reused")
        await gen.__anext__()
        await gen.aclose()  # the consumer goes away; its abort is still on its way
        return expected, await collect(engine, "the cat", quick, "reused")

    expected, outs = asyncio.run(main())
    assert [o.request_id for o in outs] == ["reused"] * len(outs)
    assert outs[-1].finish_reason == "length" and outs[-1].token_ids == expected[-1].token_ids


def test_a_stream_gets_the_output_kind_it_asks_for(engine, llama_llm):
    params = SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=0.0, logprobs=True)
    expected = llama_llm.generate(["the cat"], params)[0]

    async def main(kind):
        return [out async for out in engine.generate("the cat", params, output_kind=kind)]

    delta = asyncio.run(main(OutputKind.DELTA))
    assert len(delta) > 1 and "".join(o.text for o in delta) == expected.text
    assert [t for o in delta for t in o.token_ids] == expected.token_ids
    assert [v for o in delta for v in o.logprobs] == expected.logprobs
    final = asyncio.run(main(OutputKind.FINAL))
    assert len(final) == 1 and (final[0].text, final[0].token_ids) == (expected.text, expected.token_ids)
    assert final[0].first_token_time is not None
    with pytest.raises(ValueError, match="OutputKind"):  # refused by the caller, not the engine's loop
        asyncio.run(main("partial"))
    assert not engine.errored and asyncio.run(main(OutputKind.FINAL))[0].token_ids == expected.token_ids


def test_generate_after_shutdown_fails_at_once(tiny_checkpoint):
    eng = AsyncEngine(EngineConfig(model=str(tiny_checkpoint("llama")), dtype="fp32"))
    eng.shutdown()

    async def main():
        return await asyncio.wait_for(collect(eng, "the cat", SamplingParams(max_new_tokens=3)), timeout=10)

    with pytest.raises(EngineDeadError, match="shut down"):
        asyncio.run(main())
