"""generation.respond with a stand-in engine: the output kind each answer asks of the engine, and
a non-streaming answer's generation stopped when its client leaves."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from shardserve import OutputKind, SamplingParams
from shardserve.engine.request import FinishReason, RequestOutput
from shardserve.serving.admission import Admission
from shardserve.serving.generation import ClientDisconnected, respond


class Engine:
    """Records each generation's output kind; its generations end when `done` is set."""

    def __init__(self):
        self.kinds: list[OutputKind] = []
        self.closed: list[str] = []
        self.done = asyncio.Event()

    async def generate(self, prompt, params, request_id, output_kind):
        self.kinds.append(output_kind)
        try:
            await self.done.wait()
            yield RequestOutput(request_id, prompt, [1], "x", [5], "x", [5], True, FinishReason.LENGTH,
                                token_text_ends=[1])
        finally:
            self.closed.append(request_id)


def answer(engine: Engine, stream: bool, gone: asyncio.Event):
    """respond() for one prompt; the client leaves when `gone` is set."""
    model = SimpleNamespace(name="m", engine=engine, removed=False, require_ready=lambda: None,
                            admission=Admission(concurrency=1, queue_size=1),
                            config=SimpleNamespace(predict_timeout_s=60.0))

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(ctx=SimpleNamespace(metrics=None))),
                              receive=receive)
    response = respond(request, model, ["p"], [SamplingParams()], stream=stream, sse=False,
                       to_events=[lambda out, first: [{"text": out.delta_text}]],
                       to_body=lambda finals: [out.text for out in finals])
    return model, response


def test_an_answer_asks_for_its_final_output_only_and_a_stream_for_deltas():
    async def main(stream: bool):
        engine, gone = Engine(), asyncio.Event()
        engine.done.set()
        _, response = answer(engine, stream, gone)
        await response
        return engine.kinds

    assert asyncio.run(main(stream=False)) == [OutputKind.FINAL]
    assert asyncio.run(main(stream=True)) == [OutputKind.DELTA]


def test_a_non_streaming_answer_stops_when_its_client_leaves():
    """The first output it awaits is its last (FINAL): the client's leaving must stop the wait,
    close the generation (which aborts it in the engine) and give its queue slot back."""

    async def main():
        engine, gone = Engine(), asyncio.Event()
        model, response = answer(engine, False, gone)
        task = asyncio.ensure_future(response)
        await asyncio.sleep(0.05)
        assert not task.done() and model.admission.inflight == 1
        gone.set()
        with pytest.raises(ClientDisconnected):
            await asyncio.wait_for(task, 10)
        return engine, model

    engine, model = asyncio.run(main())
    assert len(engine.closed) == 1 and model.admission.inflight == 0
