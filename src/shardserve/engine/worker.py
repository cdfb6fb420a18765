"""A tensor-parallel rank: join the process group, build the ModelRunner, serve calls.

The same `Worker` serves both ways of starting ranks: spawned by MultiProcExecutor (calls
arrive over a pipe from the engine process) and started by an external launcher such as torchrun
or mpirun on one or many hosts (calls arrive as broadcasts from rank 0 over a gloo group).
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from shardserve.config import EngineConfig
from shardserve.errors import ShardserveError
from shardserve.parallel.state import ParallelInfo, set_parallel_info

logger = logging.getLogger(__name__)


def rank_device(config: EngineConfig, rank: int, local_rank: int) -> torch.device:
    if config.devices:
        return torch.device(config.devices[rank])
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(
    config: EngineConfig, rank: int, world_size: int, device: torch.device, master: str, store_is_hosted: bool = False
) -> dist.ProcessGroup:
    """Join the TP group (NCCL on GPUs, gloo on CPUs); returns a gloo group for control messages.
    The rendezvous store at `master` is rank 0's (a launcher's ranks), or with store_is_hosted
    one that the engine process already serves there (spawned ranks: MultiProcExecutor)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # A GPU rank's only CPU tensor work is a step's small index arithmetic, which a pool of
        # as many threads as cores, in every rank, only slows: profiled at TP2 (2x H200, 32
        # cores), one repeat_interleave over 4 sequences took 8 ms and delayed the first token.
        torch.set_num_threads(1)
    else:
        # Ranks share the host's cores; oversubscribing them makes every rank slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=config.collective_timeout_s)
    if store_is_hosted:
        host, port = master.rsplit(":", 1)
        store = dist.TCPStore(host, int(port), is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size, timeout=timeout)
    group = dist.group.WORLD
    fast_all_reduce = None
    if device.type == "cuda" and config.extra.get("fast_all_reduce", True):
        from shardserve.parallel.fast_all_reduce import DEFAULT_MAX_BYTES, create_fast_all_reduce

        # None: NCCL only. extra.fused_all_reduce_norm=false keeps the norms out of the all-reduce;
        # extra.all_reduce_split_barrier=false puts the kernels' second barrier back;
        # extra.fast_all_reduce_max_kb sets the largest sum it takes (parallel/fast_all_reduce.py).
        fuse_norm = config.extra.get("fused_all_reduce_norm", True)
        split = config.extra.get("all_reduce_split_barrier", True)
        max_kb = int(config.extra.get("fast_all_reduce_max_kb", DEFAULT_MAX_BYTES // 1024))
        fast_all_reduce = create_fast_all_reduce(group, device, world_size, fuse_norm, split, max_kb * 1024)
    set_parallel_info(ParallelInfo(rank=rank, world_size=world_size, group=group, fast_all_reduce=fast_all_reduce))
    return dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else group


class Worker:
    def __init__(self, config: EngineConfig, rank: int, device: torch.device):
        from shardserve.engine.model_runner import ModelRunner

        self.rank = rank
        self.runner = ModelRunner(config, rank, device)

    def handle(self, method: str, args: tuple):
        return getattr(self.runner, method)(*args)


def spawned_worker_main(config: EngineConfig, rank: int, world_size: int, master: str, conn) -> None:
    """Entry point of a rank spawned by MultiProcExecutor; talks to the engine over `conn`.

    Replies: ("ready", None) once loaded; ("ok", result) for each call (rank 0 only, the others'
    results are identical or None); ("error", traceback) from any rank that fails, or, for a
    user's error while loading (a bad checkpoint or option: a ShardserveError or ValueError),
    ("error", (its type, message)), which the engine raises as itself.
    """
    loaded = False
    try:
        device = rank_device(config, rank, rank)
        control = init_distributed(config, rank, world_size, device, master, store_is_hosted=True)
        worker = Worker(config, rank, device)
        conn.send(("ready", None))
        loaded = True
        while True:
            method, args = conn.recv()
            if method == "shutdown":
                leave_group(control)
                break
            result = worker.handle(method, args)
            if rank == 0:
                conn.send(("ok", result))
    except (EOFError, KeyboardInterrupt):
        pass  # the engine went away
    except BaseException as e:
        user_error = not loaded and (type(e) is ValueError or isinstance(e, ShardserveError))
        try:
            conn.send(("error", (type(e), f"rank {rank}: {e}") if user_error
                       else f"rank {rank}: {traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# The last barrier's work handle, kept until the process exits (see `leave_group`).
_LAST_BARRIER: list = []
LEAVE_TIMEOUT_S = 30.0


def leave_group(control) -> None:
    """Every rank leaves together, and rank 0 last: with a launcher, its process hosts the
    rendezvous store, and a rank still tearing down its NCCL group polls that store from the
    heartbeat thread, logging a stack trace for each poll that finds it gone (such traces came
    from ranks 2-3 in TP4 benchmark logs, with rank 0 leaving right after the barrier). So each
    other rank reports through the store once its group is destroyed, and rank 0 waits for those
    reports (`wait_for_peers_to_leave`). Spawned ranks' store lives in the engine process, which
    outlives them (MultiProcExecutor), since one such trace still came at TP4 with this order.
    The barrier's work handle is kept: otherwise the gloo thread that ran it may drop the last
    reference to its tensor after this process has begun to exit, and freeing a tensor's Python
    object from that thread then aborts the process ("terminate called without an active
    exception", seen in a core dump of a launcher-started rank 0)."""
    store = dist.distributed_c10d._get_default_store()  # outlives the group: we hold it
    rank, world = dist.get_rank(), dist.get_world_size()
    work = dist.barrier(group=control, async_op=True)
    work.wait()
    _LAST_BARRIER.append(work)
    dist.destroy_process_group()
    wait_for_peers_to_leave(store, rank, world)


def wait_for_peers_to_leave(store: dist.Store, rank: int, world: int, timeout_s: float = LEAVE_TIMEOUT_S) -> None:
    """Rank r > 0 says it has left; rank 0 returns once every other rank has, or after timeout_s
    (a rank that died says nothing: it is not waited for longer)."""
    if rank:
        store.set(f"shardserve/left/{rank}", "1")
        return
    try:
        store.wait([f"shardserve/left/{r}" for r in range(1, world)], timedelta(seconds=timeout_s))
    except RuntimeError as e:  # DistStoreError: timed out, or the store is gone
        logger.warning("not every rank reported leaving the process group within %.0f s: %s", timeout_s, e)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
