"""Run a method on every tensor-parallel rank: the one RPC primitive `call(method, *args)`.

`LocalExecutor` holds the single rank in the caller's process. Multi-rank executors
(engine/multiproc_executor.py) spawn or join ranks and broadcast each call; all return rank 0's
result, and raise EngineDeadError when a rank is gone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from shardserve.config import EngineConfig


class Executor(ABC):
    @abstractmethod
    def call(self, method: str, *args: Any) -> Any:
        """Run ModelRunner.<method>(*args) on every rank; return rank 0's result."""

    def check_health(self) -> None:  # noqa: B027 - an in-process rank cannot be lost
        """Raise EngineDeadError if a rank is gone (cheap; called while the engine is idle)."""

    def shutdown(self) -> None:  # noqa: B027 - nothing to release for in-process ranks
        """Stop every rank and release its resources."""


class LocalExecutor(Executor):
    def __init__(self, config: EngineConfig):
        from shardserve.engine.model_runner import ModelRunner

        device = torch.device(config.devices[0] if config.devices else default_device())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.runner = ModelRunner(config, rank=0, device=device)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.runner, method)(*args)


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def check_visible_gpus(tp: int, what: str = "tensor_parallel_size") -> None:
    """ValueError naming `what` when one host's ranks would need more GPUs than it shows: rank r
    takes GPU r % count (worker.rank_device), so two ranks would share one and NCCL fail or hang.
    Ranks started by a launcher place themselves; explicit devices are the caller's."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and tp > gpus and not _launched_externally():
        raise ValueError(f"{what} {tp} needs {tp} GPUs, this host has {gpus}")


def create_executor(config: EngineConfig) -> Executor:
    if not config.devices:
        check_visible_gpus(config.tensor_parallel_size)
    if config.tensor_parallel_size == 1 and not _launched_externally():
        return LocalExecutor(config)
    from shardserve.engine.multiproc_executor import LauncherExecutor, MultiProcExecutor

    return LauncherExecutor(config) if _launched_externally() else MultiProcExecutor(config)


def _launched_externally() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1
