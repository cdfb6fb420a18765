"""Collectives over the tensor-parallel group; identity on a single rank."""

from __future__ import annotations

import torch
import torch.distributed as dist

from shardserve.parallel.state import get_parallel_info


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over ranks (in place when possible) and return the result."""
    info = get_parallel_info()
    if info.world_size == 1:
        return x
    if info.fast_all_reduce is not None:
        out = info.fast_all_reduce(x)
        if out is not None:
            return out
    dist.all_reduce(x, group=info.group)
    return x


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim` (all ranks get the result)."""
    info = get_parallel_info()
    if info.world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous(), group=info.group)
    return torch.cat(parts, dim=dim)
