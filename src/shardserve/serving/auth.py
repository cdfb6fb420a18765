"""API key on inference routes; management routes on loopback only unless a key is set.

The key is compared in constant time (hmac.compare_digest) and never logged or echoed. Clients
send it as `Authorization: Bearer <key>` (what the openai client does) or `X-Api-Key: <key>`.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from shardserve.serving.http_errors import APIError


def _supplied_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "")


def _check_key(request: Request, key: str) -> None:
    if not hmac.compare_digest(_supplied_key(request).encode(), key.encode()):
        raise APIError(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request) -> None:
    """FastAPI dependency of the inference routes."""
    key = request.app.state.ctx.settings.api_key
    if key:
        _check_key(request, key)


async def require_management(request: Request) -> None:
    """FastAPI dependency of the management routes."""
    key = request.app.state.ctx.settings.api_key
    if key:
        _check_key(request, key)
    elif not _is_loopback(request.client.host if request.client else None):
        raise APIError(403, "the management API is served on loopback only unless an API key is set (--api-key)")


def _is_loopback(host: str | None) -> bool:
    if host is None:  # a Unix socket: local by definition
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
