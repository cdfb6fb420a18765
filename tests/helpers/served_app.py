"""The server's app in this process (fastapi's TestClient), its models loaded."""

from __future__ import annotations

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
