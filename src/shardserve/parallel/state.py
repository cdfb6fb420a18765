"""The tensor-parallel info of this process: one of the two pieces of scoped global state.

Layers read it at construction time to decide which slice of a weight they own; collectives
read it to find their process group. A single-rank process never touches torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelInfo:
    rank: int = 0
    world_size: int = 1
    # torch.distributed ProcessGroup of the tensor-parallel ranks (None when world_size == 1).
    group: Any = None
    # Optional faster all-reduce for small tensors (set up by the executor on GPUs).
    fast_all_reduce: Any = None


_info = ParallelInfo()


def set_parallel_info(info: ParallelInfo) -> None:
    global _info
    _info = info


def get_parallel_info() -> ParallelInfo:
    return _info


def get_tp_rank() -> int:
    return _info.rank


def get_tp_size() -> int:
    return _info.world_size
