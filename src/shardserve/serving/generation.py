"""The request path of a generation model, shared by the DJL/TGI and OpenAI routes.

A route admits its prompts (bounded queue; the n choices of an OpenAI prompt are n prompts here),
opens one `Generation` per prompt, and awaits the first output before it answers, so that every
error the engine raises up front (a bad prompt, a prompt too long for the model) becomes the
response's status code rather than a broken stream. A stream's generations send only what is
new at each update (OutputKind.DELTA), an answer's one output when done (FINAL): the engine does
not copy a growing text at every step. Each generation runs under the model's
predict timeout (504, request aborted); a client that disconnects cancels it, which aborts it in
the engine at its next step; so does an error of any other prompt of the request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import JSONResponse

from shardserve.engine.request import OutputKind, RequestOutput
from shardserve.engine.sampling_params import SamplingParams
from shardserve.errors import EngineDeadError
from shardserve.serving.http_errors import APIError, error_body
from shardserve.serving.metrics import RequestTimer, ServerMetrics
from shardserve.serving.model_store import ServedModel
from shardserve.serving.protocol import refused
from shardserve.serving.streaming import stream_response

logger = logging.getLogger(__name__)

# A stream's events of one engine update: (update, is the first) -> events.
EventsOf = Callable[[RequestOutput, bool], list[dict]]


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


class Generation:
    """One prompt's stream of outputs, with deadline, error mapping and latency metrics."""

    def __init__(self, model: ServedModel, prompt: str | list[int], params: SamplingParams,
                 metrics: ServerMetrics | None, output_kind: OutputKind, request_id: str | None = None,
                 names: Mapping[str, str] | None = None):
        """names: the request's field names by the engine's (protocol.refused), for its 400s."""
        self.model = model
        self.names = names
        self.params = params
        self.request_id = request_id or uuid.uuid4().hex
        self.deadline = asyncio.get_running_loop().time() + model.config.predict_timeout_s
        self.timer = RequestTimer(metrics, model.name)
        self._outputs = model.engine.generate(prompt, params, self.request_id, output_kind=output_kind)
        self.last: RequestOutput | None = None

    async def next(self) -> RequestOutput | None:
        """The next update, None after the last; raises APIError."""
        if self.last is not None and self.last.finished:
            return None
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            out = await asyncio.wait_for(anext(self._outputs), max(remaining, 0.0))
        except StopAsyncIteration:
            return None
        except TimeoutError:
            await self.close()
            raise APIError(504, f"generation did not finish within option.predict_timeout "
                                f"({self.model.config.predict_timeout_s:g} s); the request was aborted") from None
        except ValueError as e:  # the engine's validation of this prompt and these parameters
            raise refused(e, getattr(e, "field", None), self.names) from None
        except EngineDeadError as e:
            if self.model.removed:  # unregistered while this request ran: not a failure of the model
                raise APIError(503, f"model {self.model.name!r} was unregistered while serving the request") from None
            raise APIError(500, f"model {self.model.name!r} failed while serving the request: {e}") from None
        except APIError:
            raise
        except Exception as e:  # e.g. the Accelerate engine's generate() failing for this batch
            logger.exception("generation %s failed", self.request_id)
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}") from None
        self.timer.on_tokens(len(out.delta_token_ids), out.first_token_time)
        if out.finished:
            self.timer.finish(len(out.prompt_token_ids))
        self.last = out
        return out

    async def updates(self) -> AsyncIterator[RequestOutput]:
        while (out := await self.next()) is not None:
            yield out

    async def final(self) -> RequestOutput:
        async for _ in self.updates():
            pass
        return self.last

    async def close(self) -> None:
        """Abort in the engine if it has not finished (AsyncEngine aborts on close)."""
        await self._outputs.aclose()


def admit(model: ServedModel, n: int = 1, field: str | None = None) -> Callable[[], None]:
    """Take n of the model's queue slots (503 when full, or when the model cannot serve; 400
    naming `field`, the request's prompts, when n is more than it ever takes) and return the
    function that gives them back (safe to call twice)."""
    model.require_ready()
    model.admission.acquire(model.name, n, field)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            model.admission.release(n)

    return release


async def start(model: ServedModel, prompts: list, params: Sequence[SamplingParams],
                metrics: ServerMetrics | None, output_kind: OutputKind, names: Mapping[str, str] | None = None,
                ) -> list[tuple[Generation, RequestOutput]]:
    """Open a generation per prompt (with its `params`) and wait for each one's first output
    (raising its error, every generation closed)."""
    generations = [Generation(model, p, q, metrics, output_kind, names=names)
                   for p, q in zip(prompts, params, strict=True)]
    try:
        firsts = await gather_all(g.next() for g in generations)
    except BaseException:
        await asyncio.gather(*(g.close() for g in generations), return_exceptions=True)
        raise
    return list(zip(generations, firsts, strict=True))


async def gather_all(aws: Iterable[Awaitable]) -> list:
    """asyncio.gather that, when one fails, cancels the others and waits for them before it raises:
    a generation that a task still reads cannot be closed (its aclose fails as already running),
    and a cancelled read aborts it in the engine."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def merged_updates(generations: list[Generation]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(index, update) of the generations' next updates, in the order they come. Close it (aclose)
    before closing the generations: that cancels its reads still in flight."""
    if len(generations) == 1:  # one stream needs no tasks
        async for out in generations[0].updates():
            yield 0, out
        return
    reads = {asyncio.ensure_future(g.next()): i for i, g in enumerate(generations)}
    try:
        while reads:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for read in sorted(done, key=reads.__getitem__):
                i = reads.pop(read)
                out = read.result()  # an APIError ends the whole stream
                if out is None:
                    continue
                if not out.finished:
                    reads[asyncio.ensure_future(generations[i].next())] = i
                yield i, out
    finally:
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)


async def until_disconnect(request: Request, work: Awaitable):
    """Run `work` unless the client disconnects first (then cancel it: ClientDisconnected)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnected()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def respond(
    request: Request,
    model: ServedModel,
    prompts: list,
    params: Sequence[SamplingParams],
    *,
    stream: bool,
    sse: bool,
    to_events: Sequence[EventsOf],
    to_body: Callable[[list[RequestOutput]], object],
    closing_events: Callable[[], list[dict]] = lambda: [],
    done_marker: bool = False,
    names: Mapping[str, str] | None = None,
):
    """Admit (a queue slot per prompt), start and answer: a JSON body built by `to_body(final
    outputs)` (OutputKind.FINAL), or a stream of each prompt's `to_events[i](update, is_first)`
    (DELTA updates, merged as they come) then `closing_events()`. `params`: one per prompt.
    `names`: the request's field names by the engine's, for the 400s of the engine's own checks.
    However the answer ends (done, failed, the client gone), every prompt's generation is closed,
    which aborts it in the engine."""
    ctx = request.app.state.ctx
    release = admit(model, len(prompts), (names or {}).get("prompt"))
    starting = start(model, prompts, params, ctx.metrics, OutputKind.DELTA if stream else OutputKind.FINAL, names)
    try:
        # An answer's first outputs are its last (FINAL): a client that leaves meanwhile stops it.
        pairs = await (starting if stream else until_disconnect(request, starting))
    except BaseException:
        release()
        raise
    generations = [g for g, _ in pairs]

    async def cleanup() -> None:
        try:
            await asyncio.gather(*(g.close() for g in generations), return_exceptions=True)
        finally:
            release()

    if stream:

        async def events():
            for (_, first), events_of in zip(pairs, to_events, strict=True):
                for event in events_of(first, True):
                    yield event
            async with aclosing(merged_updates(generations)) as updates:
                async for i, out in updates:
                    for event in to_events[i](out, False):
                        yield event
            for event in closing_events():
                yield event

        body = events()

        async def close_stream() -> None:
            # First: that cancels its reads in flight, without which a generation cannot close.
            await body.aclose()
            await cleanup()

        def on_error(e: APIError) -> dict:
            return error_body(request.url.path, e.status, e.message)

        return stream_response(body, sse, on_error, close_stream, done_marker)
    try:
        finals = await until_disconnect(request, gather_all(g.final() for g in generations))
    finally:
        await cleanup()
    return JSONResponse(to_body(finals))
