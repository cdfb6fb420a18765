"""A DJLServing custom handler (`model.py` with `handle(inputs) -> Output | None`).

As in DJLServing's Python engine, one worker calls the handler one request at a time: here a
dedicated thread, so a slow handler never blocks the event loop. The first call, with empty
content and the serving options as properties, initialises the model. A handler that raises, or
returns something other than an Output or None, is answered like DJLServing does: 424 with the
error message (the traceback goes to the log). None is an empty answer.

Handler code is the user's: `sys.exit()` in it (SystemExit, no Exception) fails the load or the
request like any other error instead of silently ending the thread that ran it.

A request is a `HandlerCall`: the handler thread puts the Output, then any streamed items, into
an asyncio queue. The thread's work cannot be interrupted, so the request's queue slot is freed
(`on_finished`) only when the thread has let go of it, not when the client stops waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path

from shardserve.errors import ModelLoadError
from shardserve.serving.djl_compat import install_djl_alias
from shardserve.serving.handler import Input, Output, format_stream_item

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "djl_python."  # DJLServing's own handlers: served by our engines instead
# Handler failures that are caught: everything but the ones that mean "stop this process or
# this generator" (SystemExit from user code means "this model is broken", not "stop the server").
_PASS_THROUGH = (KeyboardInterrupt, GeneratorExit)


def find_entry_point(artifact_dir: Path, entry_point: str | None) -> Path | str | None:
    """The handler file (or importable module name) of an artifact; None when it has none."""
    if entry_point and entry_point.startswith(BUILTIN_PREFIX):
        return None
    if entry_point:
        name = entry_point if entry_point.endswith(".py") else entry_point.replace(".", "/") + ".py"
        for base in (artifact_dir, artifact_dir / "code"):
            if (base / name).is_file():
                return base / name
        if entry_point.endswith(".py"):
            raise ValueError(f"option.entryPoint: {entry_point} not found in {artifact_dir}")
        return entry_point  # a module on sys.path
    for base in (artifact_dir, artifact_dir / "code"):
        if (base / "model.py").is_file():
            return base / "model.py"
    return None


class CustomHandler:
    def __init__(self, name: str, entry: Path | str, properties: dict[str, str]):
        self.name = name
        self.entry = entry
        self.properties = properties
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"handler-{name}")
        self._handle = None

    def load(self, timeout_s: float) -> None:
        """Import the module and run the initialisation call (blocking; from the loader thread),
        within `timeout_s` (what the load has left of option.model_loading_timeout): the loader
        checks the time only once a phase is over, so a handler whose import or first call never
        returned kept the model loading for ever. A thread still in it cannot be stopped: it is
        left behind (the import's on a daemon thread, so that it does not hold up the exit)."""
        install_djl_alias()
        end = time.monotonic() + timeout_s
        importing = concurrent.futures.Future()
        threading.Thread(target=_run_into, args=(importing, _import, self.name, self.entry), daemon=True,
                         name=f"handler-import-{self.name}").start()
        module = _within(importing, end, f"importing {self.entry}", timeout_s)
        handle = getattr(module, "handle", None)
        if not callable(handle):
            raise ModelLoadError(f"{self.entry} defines no handle(inputs) function")
        self._handle = handle
        try:
            output = _within(self._pool.submit(handle, Input(properties=self.properties)), end,
                             f"{self.entry}: the initialisation call to handle()", timeout_s)
        except (ModelLoadError, *_PASS_THROUGH):
            raise
        except BaseException as e:  # the user's code: say where and what, as import errors do
            logger.error("%s: the initialisation call to handle() raised", self.name, exc_info=e)
            raise ModelLoadError(
                f"{self.entry}: the initialisation call to handle() raised {describe(e)}") from e
        if isinstance(output, Output) and output.code >= 400:
            raise ModelLoadError(f"{self.entry} initialisation failed: {output.body().decode(errors='replace')}")

    def start(self, inputs: Input, on_finished) -> HandlerCall:
        """Queue a request; `on_finished()` runs on the event loop once the thread is done with it
        (or it was cancelled before it started)."""
        loop = asyncio.get_running_loop()
        call = HandlerCall(loop)
        call.future = self._pool.submit(self._run, call, inputs)
        call.future.add_done_callback(lambda _: loop.call_soon_threadsafe(on_finished))
        return call

    def _run(self, call: HandlerCall, inputs: Input) -> None:
        if call.cancelled.is_set():
            return
        try:
            output = self._handle(inputs)
        except _PASS_THROUGH:
            raise
        except BaseException as e:  # the handler's own failure: DJLServing answers 424
            logger.exception("%s: handle() raised", self.name)
            output = Output().error(describe(e))
        if output is None:
            output = Output()
        elif not isinstance(output, Output):  # DJLServing refuses it too; dropping it hid the bug
            logger.error("%s: %s: handle() returned %s, not an Output", self.name, self.entry,
                         type(output).__name__)
            output = Output().error(f"{_file_name(self.entry)}: handle() returned "
                                    f"{type(output).__name__}, expected an Output or None")
        call.put(output)
        if output.stream_content is not None:
            try:
                for item in output.stream_content:
                    if call.cancelled.is_set():
                        break
                    call.put(format_stream_item(item, output.output_formatter))
            except _PASS_THROUGH:
                raise
            except BaseException as e:
                logger.exception("%s: the handler's stream raised", self.name)
                call.put(e)
        call.put(None)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class HandlerCall:
    """One request in flight on the handler thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.future: concurrent.futures.Future | None = None

    def put(self, event) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def output(self) -> Output:
        return await self._events.get()

    async def items(self):
        """The streamed items (bytes); stops the handler's stream if the consumer goes away."""
        try:
            while (item := await self._events.get()) is not None:
                if isinstance(item, BaseException):
                    yield format_stream_item({"error": describe(item)})
                    return
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Drop the request: before it runs it never will; while it streams the stream stops."""
        self.cancelled.set()
        if self.future is not None:
            self.future.cancel()


def _import(name: str, entry: Path | str):
    module_name = entry
    try:
        if isinstance(entry, str):
            return importlib.import_module(entry)
        # DJLServing puts the artifact dir on sys.path so handlers import their sibling modules.
        if str(entry.parent) not in sys.path:
            sys.path.insert(0, str(entry.parent))
        module_name = f"shardserve_handler_{''.join(c if c.isalnum() else '_' for c in name)}"
        spec = importlib.util.spec_from_file_location(module_name, entry)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    except _PASS_THROUGH:
        sys.modules.pop(module_name, None)
        raise
    except BaseException as e:  # SystemExit too: a module that exits at import is a failed load
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"cannot import {entry}: {describe(e)}") from e


def _run_into(future: concurrent.futures.Future, fn, *args) -> None:
    """fn(*args) on this thread, its result or exception set on `future`."""
    try:
        future.set_result(fn(*args))
    except BaseException as e:  # handed to the waiting thread, which raises it
        future.set_exception(e)


def _within(future: concurrent.futures.Future, end: float, what: str, timeout_s: float):
    """The future's result, or ModelLoadError once time.monotonic() reaches `end`."""
    try:
        return future.result(timeout=max(0.0, end - time.monotonic()))
    except concurrent.futures.TimeoutError:
        raise ModelLoadError(f"{what} did not finish within option.model_loading_timeout "
                             f"({timeout_s:g} s left of it)") from None


def describe(e: BaseException) -> str:
    """An exception for users: `ValueError: bad input`; `SystemExit(3)`, whose text alone ("3")
    would not say what happened."""
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def _file_name(entry: Path | str) -> str:
    """The handler as a user wrote it: `model.py`, or the module name of an entry point."""
    return entry.name if isinstance(entry, Path) else entry
