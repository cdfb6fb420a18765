"""Streamed response bodies: JSON lines (DJLServing's default) or server-sent events.

The body generator owns the request's resources: when the stream ends, fails, or the client
disconnects (Starlette then cancels it), its `finally` closes the generation, which aborts it
in the engine, and releases the queue slot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from shardserve.serving.http_errors import APIError

logger = logging.getLogger(__name__)

JSONLINES = "application/jsonlines"
SSE = "text/event-stream"


def wants_sse(request: Request, default_format: str) -> bool:
    """SSE when the client accepts it (TGI and OpenAI clients say so), else the model's
    `option.output_formatter` (jsonlines unless set to sse)."""
    return SSE in request.headers.get("accept", "") or default_format == "sse"


def encode(event: dict, sse: bool) -> bytes:
    data = json.dumps(event, ensure_ascii=False)
    return f"data: {data}\n\n".encode() if sse else (data + "\n").encode()


def stream_response(events: AsyncIterator[dict], sse: bool, on_error: Callable[[APIError], dict],
                    cleanup: Callable, done_marker: bool = False) -> StreamingResponse:
    """Encode `events`; an error mid-stream becomes a final error event (the status line is
    already sent; an unexpected exception is a 500's, its traceback logged); `cleanup()` (async)
    runs however the stream ends."""

    async def body():
        try:
            async for event in events:
                yield encode(event, sse)
            if done_marker:
                yield b"data: [DONE]\n\n"
        except APIError as e:
            yield encode(on_error(e), sse)
        except Exception:  # the status line is out: the client gets an event, not a cut stream
            logger.exception("a streamed answer failed")
            yield encode(on_error(APIError(500, "internal server error (details in the server log)")), sse)
        finally:
            # A client that goes away gets the body cancelled, and the server's task group cancels
            # it again at every later await: unshielded, the cleanup would stop at its first one
            # and the queue slots would stay taken.
            with anyio.CancelScope(shield=True):
                await cleanup()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type=SSE if sse else JSONLINES, headers=headers)
