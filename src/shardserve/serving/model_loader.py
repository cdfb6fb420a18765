"""Loading one model, on a background thread, phase by phase:

    downloading: the artifact (storage.fetch for s3:// and archives; local dirs as they are),
                 serving.properties + env (every key checked before anything else is fetched or
                 installed), requirements.txt, the weights (`option.model_id`)
    loading:     a custom handler (model.py) and its initialisation call, or the engine copies
    warm-up:     one tiny request through every copy

Each phase's seconds are recorded (and reported to `on_phase`, the metrics); the whole load is
bounded by `option.model_loading_timeout`: the requirements install and the weights download get
the time left of it. A failure leaves the model `failed` with the phase and the reason, which /ping
and the management API show.

A relative `option.model_id` (a directory or an archive) is a path inside the artifact, never one
under the server's current directory; one that is not there may name a model in the local Hugging
Face cache.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from shardserve.engine.generation_config import read_generation_config, sampling_defaults
from shardserve.engine.request import OutputKind
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.tokenizer import eos_token_ids
from shardserve.errors import ModelLoadError, ShardserveError
from shardserve.serving import engines
from shardserve.serving.admission import Admission
from shardserve.serving.custom_engine import CustomHandler, describe, find_entry_point
from shardserve.serving.properties import (
    ServingConfig,
    build_config,
    env_overrides,
    env_variables,
    loading_timeout,
    read_properties,
)
from shardserve.storage import hf_cache

if TYPE_CHECKING:
    from shardserve.serving.model_store import ServedModel

logger = logging.getLogger(__name__)

READY, FAILED = "ready", "failed"
TIMEOUT_KEY = "option.model_loading_timeout"


class ModelLoader:
    def __init__(self, on_phase: Callable[[str, str, float], None] | None = None,
                 environ: Mapping[str, str] | None = None):
        self._on_phase = on_phase
        self._environ = environ

    def load(self, model: ServedModel) -> None:
        started = time.monotonic()
        try:
            self._load_steps(model, started)
        except (ShardserveError, ValueError, OSError, TimeoutError) as e:
            self._fail(model, str(e))
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as e:  # a bug or a library failure (sys.exit too): keep the server
            logger.exception("loading %s failed", model.name)  # alive and the model not "loading"
            self._fail(model, describe(e))
        if model.removed or model.phase == FAILED:
            model.shutdown()

    def _load_steps(self, model: ServedModel, started: float) -> None:
        env, env_names = env_overrides(self._environ), env_variables(self._environ)
        timeout = loading_timeout(env, env_names)
        with self._phase(model, "downloading", started, timeout):
            artifact = fetch_location(model.location, timeout)
            file_values = read_properties(artifact)
            config = model.config = build_config(model.name, artifact, file_values, env, env_names)
            timeout = config.model_loading_timeout_s
            # Whether a handler reads the unknown keys depends only on the (now local) artifact:
            # refuse a typo before a pip run or a download whose failure would hide it.
            entry = find_entry_point(artifact, config.entry_point)
            if entry is None and config.unknown_keys:
                key = config.unknown_keys[0]
                where = f"set by ${env_names[key]}" if key in env_names else "in serving.properties"
                raise ValueError(f"{key}: unknown key ({where})")
            _install_requirements(artifact, config.install_requirements, started, timeout)
            weights = self._weights_dir(config, artifact, _time_left(started, timeout))
        with self._phase(model, "loading", started, timeout):
            if entry is not None:
                model.handler = CustomHandler(model.name, entry, _handler_properties(config, artifact, weights))
                model.handler.load(_time_left(started, timeout))
                model.admission = Admission(1, config.job_queue_size)
            else:
                # Read here for either engine (the Accelerate one has no sampling defaults of its
                # own), and before the weights: a bad generation_config.json costs no load time.
                generation_config = read_generation_config(weights)
                defaults = sampling_defaults(generation_config, weights)
                model.engine, concurrency = _load_engine(config, weights)
                model.admission = Admission(concurrency, config.job_queue_size)
                # Every id the engine stops on (generation_config.json may list several), so that
                # finish_reason tells an EOS stop from a stop string as the engine decided it.
                model.eos_ids = frozenset(eos_token_ids(str(weights), model.engine.engines[0].model_config,
                                                        model.engine.tokenizer, generation_config))
                model.sampling_defaults = defaults
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
            raise TimeoutError(f"loading took longer than {TIMEOUT_KEY} ({timeout:g} s)")

    def _fail(self, model: ServedModel, reason: str) -> None:
        model.error = f"{model.phase}: {reason}"
        model.phase = FAILED
        logger.error("model %s failed to load: %s", model.name, model.error)

    @staticmethod
    def _weights_dir(config: ServingConfig, artifact: Path, time_left: float) -> Path:
        model_id = config.model_id
        if not model_id:
            return artifact
        if "://" in model_id or Path(model_id).expanduser().is_absolute():
            return fetch_location(model_id, time_left)
        inside = artifact / model_id  # a directory or an archive shipped with the artifact
        if inside.is_dir():
            return inside.resolve()
        if inside.exists():
            return fetch_location(str(inside.resolve()), time_left)
        # Not in the artifact: a model id in the local HF cache, never a path under the cwd
        # (which would make the artifact mean something else depending on where it is served from).
        snapshot = hf_cache.find_snapshot(model_id)
        if snapshot is None:
            raise ModelLoadError(
                f"option.model_id: {model_id!r} is neither a file or directory in the artifact "
                f"({artifact}) nor a model in the local Hugging Face cache"
            )
        return snapshot


def fetch_location(location: str, timeout: float) -> Path:
    """A local directory for a location (a local dir is used where it is, or its only
    subdirectory: fetch.model_root; the rest is fetched)."""
    from shardserve.storage.fetch import fetch_model

    return Path(fetch_model(location, timeout_s=timeout))


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


def _time_left(started: float, timeout: float) -> float:
    """Seconds of option.model_loading_timeout left; a step with none left is not started."""
    left = timeout - (time.monotonic() - started)
    if left <= 0:
        raise TimeoutError(f"loading took longer than {TIMEOUT_KEY} ({timeout:g} s)")
    return left


def _install_requirements(artifact: Path, enabled: bool, started: float, timeout: float) -> None:
    """Install the artifact's requirements.txt privately and let its handler import them, within
    the time left of the load (pip's own retries against an unreachable index take many minutes).
    """
    from shardserve.storage.requirements import install_requirements

    time_left = _time_left(started, timeout)
    try:
        site = install_requirements(artifact, enabled=enabled, timeout_s=time_left)
    except ShardserveError as e:  # pip killed, or waiting for another process's install
        if time.monotonic() - started < timeout:
            raise  # pip's own failure: its message says what
        raise TimeoutError(
            f"installing {_requirements_name(artifact)} ran out of time: {TIMEOUT_KEY} is "
            f"{timeout:g} s ({e})"
        ) from None
    if site is not None and str(site) not in sys.path:
        sys.path.insert(0, str(site))


def _requirements_name(artifact: Path) -> str:
    """requirements.txt or code/requirements.txt, as the artifact has it."""
    from shardserve.storage.requirements import find_requirements

    found = find_requirements(artifact)
    return str(found.relative_to(artifact)) if found is not None else "requirements.txt"


async def _warm_up(replicas) -> None:
    """One tiny request through every copy: the first forward pass pays for lazy initialisation
    (allocator, kernels), not the first user."""
    params = SamplingParams(max_new_tokens=2, temperature=0.0)
    for i, engine in enumerate(replicas.engines):
        async for _ in engine.generate("Hello", params, f"warm-up-{i}", output_kind=OutputKind.FINAL):
            pass
