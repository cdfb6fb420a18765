"""Server-wide settings and the objects every route reaches through `request.app.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass, field

from shardserve.serving.metrics import ServerMetrics
from shardserve.serving.model_store import ModelStore

DEFAULT_MAX_BODY_BYTES = 16 * 2**20
API_KEY_ENV = "SHARDSERVE_API_KEY"


@dataclass(frozen=True)
class ServerSettings:
    models: tuple[tuple[str, str], ...] = ()  # (name, location), loaded at startup
    api_key: str | None = field(default=None, repr=False)  # never printed
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout_s: float = 30.0


@dataclass
class Lifecycle:
    """Graceful shutdown: once draining, new requests get 503 and the server exits when the
    in-flight ones are done (or the drain timeout passes)."""

    draining: bool = False
    inflight: int = 0  # inference requests whose response is not complete
    drain_deadline: float | None = None


@dataclass
class ServerContext:
    settings: ServerSettings
    store: ModelStore
    metrics: ServerMetrics
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
