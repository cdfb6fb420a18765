"""Live servers on loopback for end-to-end tests: in a thread (fast, shares the test process) or
as a `shardserve serve` subprocess (for signals and crashes). Every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from shardserve.engine.worker import free_port
from shardserve.serving.app import create_app
from shardserve.serving.settings import ServerSettings

MAX_BODY_BYTES = 64 * 1024  # the shared server's request body limit


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def ping(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/ping", timeout=2).status_code
    except httpx.HTTPError:
        return None


class ThreadServer:
    """create_app() under uvicorn on a thread; no environment overrides unless given."""

    def __init__(self, settings: ServerSettings, environ: dict | None = None):
        self.app = create_app(settings, environ=environ or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-server", daemon=True)

    @property
    def store(self):
        return self.app.state.ctx.store

    def start(self, ready_timeout: float = 120.0) -> ThreadServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, what="server start")
        wait_until(lambda: ping(self.url) in (200, 500), ready_timeout, interval=0.1, what="models ready")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ProcessServer:
    """`python -m shardserve.cli serve ARGS` as a subprocess; output goes to a log file."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [sys.executable, "-m", "shardserve.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPTION_", "SERVING_"))}
        full_env.update(env or {})
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def start(self, ready_timeout: float = 120.0) -> ProcessServer:
        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            return ping(self.url) in (200, 500)

        wait_until(up, ready_timeout, interval=0.1, what="process server ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
