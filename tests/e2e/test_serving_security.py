"""API key on inference routes; management on loopback only unless the key is set."""

from __future__ import annotations

import asyncio
import logging

import httpx
import openai
import pytest
from live import ThreadServer

from shardserve.serving.app import create_app
from shardserve.serving.settings import ServerSettings

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed_server(artifacts):
    live = ThreadServer(ServerSettings(models=(("handler", str(artifacts["handler"])),), api_key=KEY)).start()
    yield live
    live.stop()


def test_inference_routes_need_the_key(keyed_server, caplog):
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=keyed_server.url) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": KEY[:-1]}):
            r = c.post("/invocations", json={"action": "echo"}, headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/invocations", json={"action": "echo"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/predictions/handler", json={"action": "echo"}, headers={"X-Api-Key": KEY}).status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/ping").status_code == 200  # health checks carry no credentials
        assert c.get("/metrics").status_code == 200
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers={"X-Api-Key": KEY}).status_code == 200
    assert KEY not in caplog.text


def test_openai_client_with_and_without_the_key(keyed_server):
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0) as good:
        assert [m.id for m in good.models.list().data] == ["handler"]


async def _get(app, client_host: str, path: str, headers: dict | None = None) -> int:
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as c:
        return (await c.get(path, headers=headers)).status_code


def test_management_only_on_loopback_without_a_key():
    app = create_app(ServerSettings(), environ={})
    assert asyncio.run(_get(app, "203.0.113.9", "/models")) == 403
    assert asyncio.run(_get(app, "::1", "/models")) == 200
    assert asyncio.run(_get(app, "127.0.0.1", "/models")) == 200
    assert asyncio.run(_get(app, "203.0.113.9", "/ping")) == 200


def test_management_from_anywhere_with_the_key():
    app = create_app(ServerSettings(api_key=KEY), environ={})
    assert asyncio.run(_get(app, "203.0.113.9", "/models")) == 401
    assert asyncio.run(_get(app, "203.0.113.9", "/models", {"X-Api-Key": KEY})) == 200
