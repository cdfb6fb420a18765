"""The server's app in this process (fastapi's TestClient), its models loaded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from shardserve.serving.app import create_app
from shardserve.serving.settings import ServerSettings


def artifact(path: Path, model_dir) -> str:
    """A model artifact at `path` serving the checkpoint `model_dir` with our engine."""
    path.mkdir()
    (path / "serving.properties").write_text(f"engine=Python\noption.model_id={model_dir}\n")
    return str(path)


@contextmanager
def served(models: tuple[tuple[str, str], ...]) -> Iterator[TestClient]:
    """A client of the app serving (name, artifact) pairs, once /ping says every model is in."""
    app = create_app(ServerSettings(models=models), environ={})
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ping").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ping").status_code == 200, client.get("/ping").text
        yield client


def post_ok(client, path: str, body: dict) -> dict:
    """The JSON answer of a request that must succeed."""
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(client, path: str, body: dict) -> list:
    """A streamed request's events: JSON objects, then "[DONE]" (or an error event) last."""
    r = client.post(path, json={**body, "stream": True})
    assert r.status_code == 200, r.text
    data = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def sse_chunks(client, path: str, body: dict) -> list[dict]:
    """The chunks of a stream that must end with "[DONE]"."""
    events = sse_events(client, path, body)
    assert events[-1] == "[DONE]", events[-1]
    return events[:-1]


def djl_token_ids(client, model: str, parameters: dict, max_new_tokens: int = 12) -> list[int]:
    """The generated token ids of a DJL request for "a long story" (details on, EOS ignored)."""
    body = {"inputs": "a long story", "parameters": {"max_new_tokens": max_new_tokens, "ignore_eos": True,
                                                     "details": True, **parameters}}
    return [t["id"] for t in post_ok(client, f"/predictions/{model}", body)["details"]["tokens"]]


def error_of(response, status: int = 400) -> tuple[str, str | None]:
    """(message, param) of an error answer with `status`: OpenAI's body on /v1, DJL's (no param)
    elsewhere; always JSON, never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json") and "Traceback" not in response.text
    error = response.json()["error"]
    return (error["message"], error["param"]) if isinstance(error, dict) else (error, None)
