"""Pure ASGI middleware (no BaseHTTPMiddleware: it would hide client disconnects from routes).

For every HTTP request, in order:
1. while draining, anything but /ping and /metrics gets 503 at once;
2. a body over the limit gets 413 before it is all read: at once from Content-Length, else as
   soon as the received bytes pass the limit (the body is then buffered, bounded by the limit,
   and replayed to the app);
3. requests in progress are counted (the drain waits for them to reach 0);
4. the response code is counted per route template.
"""

from __future__ import annotations

import json

from shardserve.serving.http_errors import error_body
from shardserve.serving.settings import ServerContext

UNGATED = ("/ping", "/metrics")


class ServingMiddleware:
    def __init__(self, app, ctx: ServerContext):
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.ctx.lifecycle.draining and path not in UNGATED:
                await _reply(send_and_record, path, 503, "the server is shutting down", {"Retry-After": "5"})
                return
            limit = self.ctx.settings.max_body_bytes
            length = _content_length(scope)
            if length is not None and length > limit:
                await _reply(send_and_record, path, 413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
                return
            if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                body = await _read_bounded(receive, limit)
                if body is None:
                    await _reply(send_and_record, path, 413, f"request body exceeds the limit of {limit} bytes")
                    return
                receive = _replay(body, receive)
            counted = path not in UNGATED
            self.ctx.lifecycle.inflight += counted
            try:
                await self.app(scope, receive, send_and_record)
            finally:
                self.ctx.lifecycle.inflight -= counted
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.ctx.metrics.requests.labels(label, str(status["code"])).inc()


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_bounded(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then wait for the disconnect, as a route watching for it expects

    return replay


async def _reply(send, path: str, status: int, message: str, headers: dict | None = None) -> None:
    body = json.dumps(error_body(path, status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
