"""Tensor-parallel test harness.

- `run_tp(world_size, fn, *args)`: runs `fn(*args)` in `world_size` new processes joined in a
  gloo group on a free loopback port, with shardserve's ParallelInfo set; returns the results
  in rank order. `fn` must be importable (a module-level function).
- `as_rank(rank, world_size)`: pretend to be one rank in this process, for tests that only
  construct layers and load their slices (no collectives).
"""

from __future__ import annotations

import pickle
import queue
import socket
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shardserve.parallel import ParallelInfo, get_parallel_info, set_parallel_info


@contextmanager
def as_rank(rank: int, world_size: int) -> Iterator[None]:
    previous = get_parallel_info()
    set_parallel_info(ParallelInfo(rank=rank, world_size=world_size))
    try:
        yield
    finally:
        set_parallel_info(previous)


_PRELOAD = [
    "torch", "torch.distributed", "safetensors.torch", "shardserve.models",
    "shardserve.weights.loader", "helpers.tp", "helpers.forward",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results) -> None:
    try:
        torch.set_num_threads(1)  # several ranks share the CI machine's 2 cores
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
        set_parallel_info(ParallelInfo(rank=rank, world_size=world_size, group=dist.group.WORLD))
        # Plain pickle bytes: tensors are copied, not shared (the rank exits right after).
        results.put((rank, None, pickle.dumps(fn(*args))))
    except BaseException:
        results.put((rank, traceback.format_exc(), None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_tp(world_size: int, fn: Callable, *args: Any, timeout: float = 240.0) -> list[Any]:
    # forkserver: one clean server process imports torch & co. once, then forks each rank
    # (importing torch per spawned rank costs ~2 s of CPU each; forking the test process itself
    # is unsafe once it has run OpenMP kernels).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world_size, port, fn, args, results), daemon=True)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    outputs: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, error, payload = results.get(timeout=timeout)
            if error:
                errors.append(f"rank {rank}:\n{error}")
                break  # the other ranks may now hang in a collective
            outputs[rank] = pickle.loads(payload)
    except queue.Empty:
        errors.append(f"timed out after {timeout}s waiting for ranks {sorted(set(range(world_size)) - set(outputs))}")
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [outputs[r] for r in range(world_size)]
