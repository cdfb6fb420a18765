"""The served models: where each comes from, its load phases, its engine, its health.

A model is registered at once and loads on a background thread, so the server answers /ping
(503 with the phase) while it downloads, loads and warms up. Phases:

    pending -> downloading -> loading -> warm-up -> ready        (or -> failed, with the reason)

Location -> local artifact dir (storage.fetch for s3:// and archives) -> serving.properties + env
-> the weights dir (`option.model_id` when set, fetched the same way) -> a custom handler
(model.py) or a generation engine (ours or Accelerate) in one or more copies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

from shardserve.engine.sampling_params import SamplingParams
from shardserve.errors import ModelLoadError, ShardserveError
from shardserve.serving import engines
from shardserve.serving.admission import Admission
from shardserve.serving.custom_engine import CustomHandler, find_entry_point
from shardserve.serving.http_errors import APIError
from shardserve.serving.properties import (
    ServingConfig,
    build_config,
    env_overrides,
    read_properties,
)

logger = logging.getLogger(__name__)

READY, FAILED = "ready", "failed"


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
        self._on_phase = on_phase
        self._environ = environ
        self._lock = threading.Lock()

    def add(self, name: str, location: str, wait: bool = False) -> ServedModel:
        with self._lock:
            if name in self.models:
                raise APIError(409, f"model {name!r} is already registered")
            model = self.models[name] = ServedModel(name, location)
        thread = threading.Thread(target=self._load, args=(model,), name=f"load-{name}", daemon=True)
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

    # -- loading (background thread) -----------------------------------------------------------
    def _load(self, model: ServedModel) -> None:
        started = time.monotonic()
        try:
            self._load_steps(model, started)
        except (ShardserveError, ValueError, OSError, TimeoutError) as e:
            self._fail(model, str(e))
        except Exception as e:  # a bug or a library failure: keep the server alive, say what
            logger.exception("loading %s failed", model.name)
            self._fail(model, f"{type(e).__name__}: {e}")
        if model.removed or model.phase == FAILED:
            model.shutdown()

    def _load_steps(self, model: ServedModel, started: float) -> None:
        env = env_overrides(self._environ)
        timeout = float(env.get("option.model_loading_timeout") or 1800.0)
        with self._phase(model, "downloading", started, timeout):
            artifact = self._fetch(model.location, timeout)
            config = model.config = build_config(model.name, artifact, read_properties(artifact), env)
            timeout = config.model_loading_timeout_s
            _install_requirements(artifact, config.install_requirements)
            weights = self._weights_dir(config, artifact)
        entry = find_entry_point(artifact, config.entry_point)
        with self._phase(model, "loading", started, timeout):
            if entry is not None:
                model.handler = CustomHandler(model.name, entry, _handler_properties(config, artifact, weights))
                model.handler.load()
                model.admission = Admission(1, config.job_queue_size)
            else:
                if config.unknown_keys:
                    raise ValueError(f"{config.unknown_keys[0]}: unknown key in serving.properties or the environment")
                model.engine, concurrency = _load_engine(config, weights)
                model.admission = Admission(concurrency, config.job_queue_size)
                eos = model.engine.tokenizer.eos_token_id
                model.eos_ids = frozenset(() if eos is None else (eos,))
        if model.engine is not None:
            with self._phase(model, "warm-up", started, timeout):
                asyncio.run(_warm_up(model.engine))
        model.phase = READY
        logger.info("model %s ready in %.1f s (%s)", model.name, time.monotonic() - started,
                    ", ".join(f"{k} {v:.1f} s" for k, v in model.phase_seconds.items()))

    @contextmanager
    def _phase(self, model: ServedModel, name: str, started: float, timeout: float):
        """Enter a load phase; record its seconds; enforce option.model_loading_timeout."""
        if model.removed:
            raise ModelLoadError("unregistered while loading")
        model.phase = name
        t0 = time.monotonic()
        yield
        model.phase_seconds[name] = time.monotonic() - t0
        if self._on_phase is not None:
            self._on_phase(model.name, name, model.phase_seconds[name])
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"loading took longer than option.model_loading_timeout ({timeout:g} s)")

    def _fail(self, model: ServedModel, reason: str) -> None:
        model.error = f"{model.phase}: {reason}"
        model.phase = FAILED
        logger.error("model %s failed to load: %s", model.name, model.error)

    @staticmethod
    def _fetch(location: str, timeout: float) -> Path:
        local = Path(location[len("file://"):] if location.startswith("file://") else location)
        if local.is_dir():
            return local.resolve()
        from shardserve.storage.fetch import fetch_model

        return Path(fetch_model(location, timeout_s=timeout))

    def _weights_dir(self, config: ServingConfig, artifact: Path) -> Path:
        if not config.model_id:
            return artifact
        relative = artifact / config.model_id
        if relative.is_dir():
            return relative.resolve()
        return self._fetch(config.model_id, config.model_loading_timeout_s)


def model_name(location: str) -> str:
    """A model's default name: the last part of its location, without archive suffixes."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or "model"


def _load_engine(config: ServingConfig, weights: Path):
    """The engine copies and how many requests they run at once."""
    if engines.generation_engine(config, weights) == engines.ACCELERATE:
        from shardserve.serving.accelerate_engine import AccelerateEngine

        return engines.ReplicaSet([AccelerateEngine(config, weights)]), config.batch_size
    copies = engines.load_tp_copies(config, weights)
    return engines.ReplicaSet(copies), config.max_rolling_batch_size * len(copies)


def _handler_properties(config: ServingConfig, artifact: Path, weights: Path) -> dict[str, str]:
    """What DJLServing gives a handler's initialisation call: its options and where it lives."""
    props = {k: str(v) for k, v in config.options.items()}
    props.update(model_dir=str(artifact), tensor_parallel_degree=str(config.tensor_parallel_degree))
    if config.model_id:
        props["model_id"] = str(weights)
    return props


def _install_requirements(artifact: Path, enabled: bool) -> None:
    if not (artifact / "requirements.txt").is_file() and not (artifact / "code" / "requirements.txt").is_file():
        return
    from shardserve.storage.requirements import install_requirements

    install_requirements(artifact, enabled=enabled)


async def _warm_up(replicas) -> None:
    """One tiny request through every copy: the first forward pass pays for lazy initialisation
    (allocator, kernels), not the first user."""
    params = SamplingParams(max_new_tokens=2, temperature=0.0)
    for i, engine in enumerate(replicas.engines):
        async for _ in engine.generate("Hello", params, f"warm-up-{i}"):
            pass
