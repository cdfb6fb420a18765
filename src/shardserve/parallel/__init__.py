"""Process-group state and collectives for tensor parallelism."""

from shardserve.parallel.state import (
    ParallelInfo,
    get_parallel_info,
    get_tp_rank,
    get_tp_size,
    set_parallel_info,
)

__all__ = ["ParallelInfo", "get_parallel_info", "get_tp_rank", "get_tp_size", "set_parallel_info"]
