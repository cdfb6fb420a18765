"""uvicorn, with SageMaker-style draining on SIGTERM.

uvicorn alone stops listening at SIGTERM, so a load balancer's next request would be refused
instead of told to go elsewhere. Here SIGTERM only starts draining: the socket stays open, /ping
and new requests answer 503, and the server exits (status 0) once the in-flight requests are
done or the drain timeout passes. A second SIGTERM, or SIGINT, exits at once the uvicorn way.
"""

from __future__ import annotations

import logging
import signal
import time

import uvicorn

from shardserve.serving.settings import Lifecycle

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_timeout_s: float):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_timeout_s = drain_timeout_s

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and not self.lifecycle.draining:
            # Not recorded as a captured signal: uvicorn would re-raise it at exit (status -15).
            self.lifecycle.draining = True
            self.lifecycle.drain_deadline = time.monotonic() + self.drain_timeout_s
            logger.info("SIGTERM: draining %d request(s), at most %.0f s", self.lifecycle.inflight, self.drain_timeout_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        life = self.lifecycle
        if life.draining and (life.inflight == 0 or time.monotonic() > life.drain_deadline):
            if life.inflight:
                logger.warning("drain timeout: %d request(s) still running are cut off", life.inflight)
            return True
        return await super().on_tick(counter)


def run_server(app, host: str, port: int, lifecycle: Lifecycle, drain_timeout_s: float, log_level: str = "info") -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                            timeout_graceful_shutdown=max(drain_timeout_s, 1.0), access_log=False)
    DrainingServer(config, lifecycle, drain_timeout_s).run()
