"""AsyncEngine: the engine loop on a background thread, per-request async streams.

The event loop only tokenizes, enqueues and awaits; the step loop (model forward, sampling,
detokenisation) runs on its own thread, so serving I/O never waits on a forward pass. The two
sides talk through a thread-safe command queue (add / abort) and, back, `call_soon_threadsafe`
into each request's asyncio.Queue. Inside the engine each call of `generate` runs under an id of
its own ("<request_id>#<serial>"), so a caller that reuses a request id at once (after
cancelling its stream) never receives the old request's late updates or its abort.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator

from shardserve.config import EngineConfig
from shardserve.engine.llm import LLM, Prompt, encode_prompt
from shardserve.engine.request import OutputKind, RequestOutput
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.tokenizer import load_tokenizer
from shardserve.errors import EngineDeadError

logger = logging.getLogger(__name__)

_IDLE_HEALTH_CHECK_S = 1.0


class AsyncEngine:
    def __init__(self, config: EngineConfig, llm: LLM | None = None):
        self.llm = llm or LLM(config=config)
        self.config = config
        # A tokenizer of the front's own: fast tokenizers must not be shared across threads.
        self.tokenizer = load_tokenizer(config.model)
        self.model_config = self.llm.model_config
        self.max_model_len = self.llm.max_model_len
        self._commands: queue.Queue = queue.Queue()
        # Keyed by engine id; _running maps a caller's request id to its engine id.
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._running: dict[str, str] = {}
        self._serial = itertools.count()
        self._streams_lock = threading.Lock()
        self._stats: dict = self.llm.stats()
        self._dead: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="shardserve-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_model(cls, model: str, **options) -> AsyncEngine:
        return cls(EngineConfig(model=model, **options))

    @property
    def errored(self) -> bool:
        return self._dead is not None

    def stats(self) -> dict:
        return dict(self._stats)

    # -- the caller side (event loop) ----------------------------------------------------------
    def encode(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """Validated prompt token ids (this thread's tokenizer); ValueError names the problem."""
        return encode_prompt(self.tokenizer, prompt, params, self.model_config.vocab_size, self.max_model_len)

    async def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None, *,
        output_kind: OutputKind = OutputKind.CUMULATIVE,
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs, as `output_kind` says (request.OutputKind)."""
        params = params or self.llm.default_sampling_params()
        request_id = request_id or uuid.uuid4().hex
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if self._stopping:
            raise EngineDeadError("the engine was shut down")
        token_ids = self.encode(prompt, params)
        output_kind = OutputKind(output_kind)  # here: a ValueError in the engine's loop would stop it
        stream: asyncio.Queue = asyncio.Queue()
        with self._streams_lock:
            if request_id in self._running:
                raise ValueError(f"request_id {request_id!r} is already running")
            engine_id = f"{request_id}#{next(self._serial)}"
            self._running[request_id] = engine_id
            self._streams[engine_id] = (asyncio.get_running_loop(), stream)
        self._commands.put(("add", engine_id, prompt if isinstance(prompt, str) else None, params, token_ids,
                            output_kind))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                item.request_id = request_id  # each output is made for this stream alone: no copy
                yield item
                if finished:
                    return
        finally:
            with self._streams_lock:
                self._streams.pop(engine_id, None)
                del self._running[request_id]
            if not finished:  # consumer went away (disconnect, timeout, cancel)
                self._commands.put(("abort", engine_id))

    async def abort(self, request_id: str) -> None:
        with self._streams_lock:
            engine_id = self._running.get(request_id)
        if engine_id is not None:
            self._commands.put(("abort", engine_id))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the loop and the ranks; requests still running fail with EngineDeadError."""
        self._stopping = True
        self._commands.put(("stop",))
        self._thread.join(timeout)
        self.llm.shutdown()
        self._fail_streams(EngineDeadError("the engine was shut down"))

    # -- the engine side (background thread) ----------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopping:
                if not self.llm.has_unfinished():
                    self._wait_for_work()
                while True:
                    try:
                        self._handle(self._commands.get_nowait())
                    except queue.Empty:
                        break
                if self._stopping:
                    break
                if self.llm.has_unfinished():
                    for out in self.llm.step():
                        self._deliver(out.request_id, out)
                self._stats = self.llm.stats()
        except BaseException as e:  # a dead rank, a CUDA error: fail everyone, loudly
            logger.exception("engine loop failed")
            self._dead = e
            self._fail_streams(EngineDeadError(f"the engine stopped: {e}"))

    def _fail_streams(self, error: EngineDeadError) -> None:
        with self._streams_lock:
            streams = list(self._streams)
        for engine_id in streams:
            self._deliver(engine_id, error)

    def _wait_for_work(self) -> None:
        """Block until a command arrives; while idle, check every second that the ranks live,
        so a rank lost between requests shows as an errored engine (and on /ping) at once."""
        while True:
            try:
                self._handle(self._commands.get(timeout=_IDLE_HEALTH_CHECK_S))
                return
            except queue.Empty:
                self.llm.executor.check_health()

    def _handle(self, command) -> None:  # request ids here are engine ids
        if command is None:
            return
        kind = command[0]
        if kind == "add":
            _, engine_id, prompt, params, token_ids, output_kind = command
            with self._streams_lock:
                alive = engine_id in self._streams
            if alive:  # it may have been cancelled before the loop saw it
                self.llm.add_request(engine_id, prompt, params, prompt_token_ids=token_ids, output_kind=output_kind)
        elif kind == "abort":
            out = self.llm.abort(command[1])
            if out is not None:
                self._deliver(out.request_id, out)
        elif kind == "stop":
            self._stopping = True

    def _deliver(self, request_id: str, item) -> None:
        with self._streams_lock:
            target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)
