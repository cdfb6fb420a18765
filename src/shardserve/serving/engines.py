"""Which engine serves a model, how many copies of it, and spreading requests over the copies.

A generation engine, for the server, is anything shaped like `AsyncEngine`: `generate(prompt,
params, request_id, output_kind=...)` (async iterator of RequestOutput), `tokenizer`,
`max_model_len`, `errored`, `stats()`, `shutdown()`. Our AsyncEngine and AccelerateEngine both are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shardserve.config import EngineConfig
from shardserve.engine.request import OutputKind
from shardserve.errors import EngineDeadError
from shardserve.serving.properties import ServingConfig

logger = logging.getLogger(__name__)

TP, ACCELERATE = "tp", "accelerate"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def generation_engine(config: ServingConfig, model_dir: Path) -> str:
    """TP for the engine names DJLServing artifacts use (DeepSpeed, MPI, Python), Accelerate when
    asked for or when our engine lacks the architecture."""
    if config.engine and config.engine.lower() == ACCELERATE:
        return ACCELERATE
    arch = model_architecture(model_dir)
    if arch is not None and not tp_supports(arch):
        logger.warning("%s: our engine has no %s; serving it with the Accelerate engine", config.name, arch)
        return ACCELERATE
    return TP


def model_architecture(model_dir: Path) -> str | None:
    try:
        archs = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None  # our engine's loader reports a missing or broken config.json precisely
    return archs[0] if archs else None


def tp_supports(architecture: str) -> bool:
    from shardserve import models

    registry = getattr(models, "ARCHITECTURES", None)
    return registry is None or architecture in registry


def copy_devices(tp: int, gpus: int, min_workers: int | None = None,
                 max_workers: int | None = None) -> list[tuple[str, ...] | None]:
    """Devices of each copy: GPUs ÷ degree copies of `tp` consecutive GPUs each. Without GPUs,
    one copy on the CPU (or minWorkers copies: how tests exercise several copies)."""
    if gpus == 0:
        return [None] * max(min_workers or 1, 1)
    if tp > gpus:
        raise ValueError(f"option.tensor_parallel_degree is {tp} but this host has {gpus} GPU(s)")
    copies = gpus // tp
    if max_workers:
        copies = min(copies, max_workers)
    if min_workers and min_workers > copies:
        raise ValueError(f"minWorkers is {min_workers} but {gpus} GPU(s) hold only {copies} copies at degree {tp}")
    return [tuple(f"cuda:{c * tp + r}" for r in range(tp)) for c in range(copies)]


def engine_config(config: ServingConfig, model_dir: Path, devices: tuple[str, ...] | None) -> EngineConfig:
    return EngineConfig(
        model=str(model_dir),
        dtype=config.dtype,
        tensor_parallel_size=config.tensor_parallel_degree,
        devices=devices,
        quantization=config.quantization,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_rolling_batch_size,
        **config.engine_options,
    )


def load_tp_copies(config: ServingConfig, model_dir: Path) -> list:
    """One AsyncEngine per copy, loaded side by side; all or nothing."""
    from shardserve.engine.async_engine import AsyncEngine

    devices = copy_devices(config.tensor_parallel_degree, gpu_count(), config.min_workers, config.max_workers)
    configs = [engine_config(config, model_dir, d) for d in devices]
    with ThreadPoolExecutor(len(configs), thread_name_prefix=f"load-{config.name}") as pool:
        futures = [pool.submit(AsyncEngine, c) for c in configs]
        engines, error = [], None
        for future in futures:
            try:
                engines.append(future.result())
            except BaseException as e:  # noqa: B036 - keep the first, shut the rest down
                error = error or e
    if error is not None:
        for engine in engines:
            engine.shutdown()
        raise error
    return engines


class ReplicaSet:
    """Copies of one model. A request goes to the healthy copy with the fewest requests in flight
    (round robin among equals), which keeps copies evenly loaded whatever the request lengths."""

    def __init__(self, engines: Sequence):
        if not engines:
            raise ValueError("a ReplicaSet needs at least one engine")
        self.engines = list(engines)
        self.inflight = [0] * len(self.engines)
        self.served = [0] * len(self.engines)  # requests each copy has taken
        self._last = -1

    @property
    def tokenizer(self):
        return self.engines[0].tokenizer

    @property
    def max_model_len(self) -> int:
        return min(e.max_model_len for e in self.engines)

    @property
    def errored(self) -> bool:
        return any(e.errored for e in self.engines)

    def pick(self) -> int:
        n = len(self.engines)
        healthy = [i for i in range(n) if not self.engines[i].errored]
        if not healthy:
            raise EngineDeadError("every copy of the model has stopped")
        fewest = min(self.inflight[i] for i in healthy)
        choice = min((i for i in healthy if self.inflight[i] == fewest), key=lambda i: (i - self._last - 1) % n)
        self._last = choice
        return choice

    async def generate(self, prompt, params, request_id: str,
                       output_kind: OutputKind = OutputKind.CUMULATIVE) -> AsyncIterator:
        index = self.pick()
        self.inflight[index] += 1
        self.served[index] += 1
        try:
            async for out in self.engines[index].generate(prompt, params, request_id, output_kind=output_kind):
                yield out
        finally:
            self.inflight[index] -= 1

    def stats(self) -> dict:
        per_copy = [e.stats() for e in self.engines]
        return {
            "num_running": sum(s.get("num_running", 0) for s in per_copy),
            "num_waiting": sum(s.get("num_waiting", 0) for s in per_copy),
            "kv_cache_usage": sum(s.get("kv_cache_usage", 0.0) for s in per_copy) / len(per_copy),
            "copies": per_copy,
        }

    def shutdown(self) -> None:
        for engine in self.engines:
            try:
                engine.shutdown()
            except Exception:
                logger.exception("shutting down an engine copy failed")
