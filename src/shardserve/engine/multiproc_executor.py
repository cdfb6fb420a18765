"""Executors for more than one rank.

MultiProcExecutor spawns every rank on this host (rank 0 included) and drives them over pipes,
so the engine process never blocks inside a collective: it waits on rank 0's reply and on every
rank's process sentinel at once, and a rank that raises or dies fails the call at once with
EngineDeadError, after which the remaining ranks are killed. A user's error while the ranks
start (a damaged rank file, heads not divisible by the degree) is raised as itself, with its
message and no traceback.

LauncherExecutor serves ranks started by an external launcher (torchrun / mpirun env: RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), possibly on several hosts: rank 0 hosts the
engine and broadcasts each call over a gloo group; every other rank serves calls until shutdown
and then exits. A lost remote rank surfaces as a collective error or after
`collective_timeout_s`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing as mp
import os
import sys
import time
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any

import torch.distributed as dist

from shardserve.config import EngineConfig
from shardserve.engine.executor import Executor
from shardserve.engine.worker import (
    Worker,
    init_distributed,
    leave_group,
    rank_device,
    spawned_worker_main,
)
from shardserve.errors import EngineDeadError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _caller_main_hidden():
    """multiprocessing re-runs the caller's main module in every child it starts, so that
    objects defined there can be unpickled. Ranks run shardserve code alone and need none of
    it, and re-running it would start a script's engine again inside each rank, unless the
    script guards its code with `if __name__ == "__main__":`. So while a rank starts, the main
    module shows no file or module name to import it by (see multiprocessing.spawn)."""
    main = sys.modules["__main__"]
    saved = {key: main.__dict__[key] for key in ("__spec__", "__file__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class MultiProcExecutor(Executor):
    def __init__(self, config: EngineConfig):
        # A fork server with torch and our modules preloaded starts ranks in about a second
        # instead of re-importing torch in each one (as spawn does); it never touches CUDA.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["shardserve.engine.worker", "shardserve.engine.model_runner"])
        # The ranks' rendezvous store lives here, so that it outlives every rank: a rank's NCCL
        # heartbeat thread polls it until that rank's process ends (worker.leave_group). Port 0:
        # the system picks a free one as the store binds it.
        self.store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=config.collective_timeout_s))
        master = f"127.0.0.1:{self.store.port}"
        self.world_size = config.tensor_parallel_size
        self.procs: list[mp.Process] = []
        self.conns = []
        self._closed = False
        for rank in range(self.world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=spawned_worker_main,
                args=(config, rank, self.world_size, master, child),
                name=f"shardserve-rank{rank}",
                daemon=True,
            )
            with _caller_main_hidden():
                proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        atexit.register(self.shutdown)
        self._await(lambda replies: len(replies) == self.world_size, expect="ready")

    def call(self, method: str, *args: Any) -> Any:
        if self._closed:
            raise EngineDeadError("the engine's ranks are shut down")
        try:
            for conn in self.conns:
                conn.send((method, args))
        except OSError as e:
            self._fail(f"cannot reach a rank: {e}")
        return self._await(lambda replies: 0 in replies, expect="ok")[0]

    def check_health(self) -> None:
        if self._closed:
            raise EngineDeadError("the engine's ranks are shut down")
        for rank, proc in enumerate(self.procs):
            if not proc.is_alive():
                self._fail(f"rank {rank} exited unexpectedly (exit code {proc.exitcode})")

    def _await(self, done, expect: str) -> dict[int, Any]:
        replies: dict[int, Any] = {}
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.procs)}
        conns = {id(c): rank for rank, c in enumerate(self.conns)}
        while not done(replies):
            for ready in wait(list(self.conns) + list(sentinels)):
                if isinstance(ready, int):
                    rank = sentinels[ready]
                    self._fail(f"rank {rank} exited unexpectedly (exit code {self.procs[rank].exitcode})")
                rank = conns[id(ready)]
                try:
                    kind, value = ready.recv()
                except (EOFError, OSError):
                    self._fail(f"rank {rank} closed its connection")
                if kind == "error" and isinstance(value, tuple):  # a user's error while loading
                    error_type, message = value
                    logger.error("tensor-parallel engine failed to start: %s", message)
                    self.shutdown(graceful=False)
                    raise error_type(message)
                if kind == "error":
                    # A rank that died makes its peers' collectives fail too: blame it, not them.
                    self._fail(self._crashed_peer(rank) or str(value))
                assert kind == expect, (kind, expect)
                replies[rank] = value
        return replies

    def _crashed_peer(self, reporter: int, grace_s: float = 0.5) -> str | None:
        """'rank N exited unexpectedly (...)' for a rank other than `reporter` that was killed or
        crashed (a non-zero exit code; a rank that reports its own error exits with 0), waiting
        up to grace_s for one that is dying."""
        deadline = time.monotonic() + grace_s
        while True:
            live = []
            for rank, proc in enumerate(self.procs):
                if rank != reporter and proc.exitcode not in (None, 0):
                    return f"rank {rank} exited unexpectedly (exit code {proc.exitcode})"
                if rank != reporter and proc.exitcode is None:
                    live.append(proc.sentinel)
            left = deadline - time.monotonic()
            if not live or left <= 0:
                return None
            wait(live, timeout=left)

    def _fail(self, message: str) -> None:
        logger.error("tensor-parallel engine failed: %s", message)
        self.shutdown(graceful=False)
        raise EngineDeadError(message)

    def shutdown(self, graceful: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if graceful:
            for conn in self.conns:
                try:
                    conn.send(("shutdown", ()))
                except OSError:
                    pass
            for proc in self.procs:
                proc.join(timeout=10)
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()
        # The atexit hook would keep this executor alive, and with it each rank's process object
        # and its pipes (freed with the object), for as long as the process runs.
        atexit.unregister(self.shutdown)
        self.store = None  # every rank is gone


class LauncherExecutor(Executor):
    def __init__(self, config: EngineConfig):
        env = os.environ
        self.rank = int(env["RANK"])
        world_size = int(env["WORLD_SIZE"])
        if world_size != config.tensor_parallel_size:
            raise ValueError(
                f"the launcher started WORLD_SIZE={world_size} ranks but tensor_parallel_size is "
                f"{config.tensor_parallel_size}"
            )
        master = f"{env.get('MASTER_ADDR', '127.0.0.1')}:{env.get('MASTER_PORT', '29500')}"
        device = rank_device(config, self.rank, int(env.get("LOCAL_RANK", self.rank)))
        self.control = init_distributed(config, self.rank, world_size, device, master)
        self.worker = Worker(config, self.rank, device)
        self._closed = False
        if self.rank != 0:
            self._serve_forever()
            sys.exit(0)

    def call(self, method: str, *args: Any) -> Any:
        message = [method, args]
        dist.broadcast_object_list(message, src=0, group=self.control)
        return self.worker.handle(method, args)

    def _serve_forever(self) -> None:
        while True:
            message = [None, None]
            dist.broadcast_object_list(message, src=0, group=self.control)
            method, args = message
            if method == "shutdown":
                break
            self.worker.handle(method, args)
        leave_group(self.control)

    def shutdown(self) -> None:
        if self._closed or self.rank != 0:
            return
        self._closed = True
        dist.broadcast_object_list(["shutdown", ()], src=0, group=self.control)
        leave_group(self.control)
