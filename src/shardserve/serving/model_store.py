"""The served models: registry, state and health.

A model is registered at once and loads on a background thread (model_loader.py), so the server
answers /ping (503 with the phase) while it downloads, loads and warms up:

    pending -> downloading -> loading -> warm-up -> ready        (or -> failed, with the reason)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from shardserve.serving.admission import Admission
from shardserve.serving.custom_engine import CustomHandler
from shardserve.serving.http_errors import APIError
from shardserve.serving.model_loader import FAILED, READY, ModelLoader
from shardserve.serving.properties import ServingConfig
from shardserve.storage.uri import ARCHIVE_SUFFIXES


class ServedModel:
    def __init__(self, name: str, location: str):
        self.name = name
        self.location = location
        self.phase = "pending"
        self.error: str | None = None
        self.phase_seconds: dict[str, float] = {}
        self.config: ServingConfig | None = None
        self.engine = None  # ReplicaSet, for generation models
        self.handler: CustomHandler | None = None
        self.admission: Admission | None = None
        self.eos_ids: frozenset[int] = frozenset()
        # Sampling fields a request leaves out take these (engine/generation_config.py).
        self.sampling_defaults: dict = {}
        self.removed = False

    @property
    def ready(self) -> bool:
        return self.phase == READY and not self.errored

    @property
    def errored(self) -> bool:
        """Failed to load, or its engine died while serving."""
        return self.phase == FAILED or (self.engine is not None and self.engine.errored)

    @property
    def kind(self) -> str:
        return "custom" if self.handler is not None else "generate"

    def status(self) -> dict:
        if self.engine is not None and self.engine.errored and self.phase == READY:
            return {"status": FAILED, "error": "the engine stopped while serving"}
        body: dict = {"status": self.phase}
        if self.error:
            body["error"] = self.error
        return body

    def require_ready(self) -> None:
        """Raise the HTTP error a request to a model that cannot serve gets."""
        if self.errored:
            raise APIError(503, f"model {self.name!r} is not available: {self.status().get('error')}")
        if not self.ready:
            raise APIError(503, f"model {self.name!r} is still loading ({self.phase})", headers={"Retry-After": "5"})

    def stats(self) -> dict:
        live = self.engine.stats() if self.engine is not None and self.ready else {}
        admission = self.admission
        return {
            "queue_depth": admission.queue_depth if admission else 0,
            "running": live.get("num_running", admission.running if admission else 0),
            "kv_cache_usage": live.get("kv_cache_usage", 0.0),
        }

    def shutdown(self) -> None:
        for part in (self.engine, self.handler):
            if part is not None:
                part.shutdown()


class ModelStore:
    def __init__(self, on_phase: Callable[[str, str, float], None] | None = None,
                 environ: Mapping[str, str] | None = None):
        self.models: dict[str, ServedModel] = {}
        self._loader = ModelLoader(on_phase, environ)
        self._lock = threading.Lock()

    def add(self, name: str, location: str, wait: bool = False) -> ServedModel:
        with self._lock:
            if name in self.models:
                raise APIError(409, f"model {name!r} is already registered")
            model = self.models[name] = ServedModel(name, location)
        thread = threading.Thread(target=self._loader.load, args=(model,), name=f"load-{name}", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return model

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise APIError(404, f"model {name!r} not found; loaded: {sorted(self.models)}", param="model")
        return model

    def default(self) -> ServedModel:
        """The model /invocations serves: the first registered."""
        if not self.models:
            raise APIError(404, "no model is loaded")
        return next(iter(self.models.values()))

    def remove(self, name: str) -> None:
        model = self.get(name)
        with self._lock:
            self.models.pop(name, None)
        model.removed = True
        model.shutdown()

    def health(self) -> tuple[int, dict]:
        """SageMaker /ping: 500 once any model failed, 503 while any loads, else 200."""
        models = {name: m.status() for name, m in list(self.models.items())}
        if any(m.errored for m in self.models.values()):
            return 500, {"status": "Unhealthy", "models": models}
        if not all(m.ready for m in self.models.values()):
            return 503, {"status": "Loading", "models": models}
        return 200, {"status": "Healthy", "models": models}

    def shutdown(self) -> None:
        for model in list(self.models.values()):
            model.shutdown()


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a model, or None: no URL path addresses an empty name or one with
    '/' (/predictions/{name}, /models/{name}), so such a model could never be called or
    unregistered; control characters would also forge lines of the server's log."""
    if not name or "/" in name or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name!r} cannot name a model: a name is not empty and holds no '/' and no control characters"
    return None


def model_name(location: str) -> str:
    """A model's default name: the last part of its location, without archive suffixes."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or "model"
