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


def all_reduce_add_norm(partial: torch.Tensor, residual: torch.Tensor | None, norm):
    """partial [T, dim]: this rank's share of x = all_reduce(partial). -> (norm(x + residual),
    x + residual), or (norm(x), x) without a residual; `norm` is a layers.norm RMSNorm/LayerNorm.

    On GPUs one kernel does all three (SymmMemAllReduce.add_norm): one norm launch fewer per
    row-parallel layer, with the bits of the fast all-reduce followed by the norm's kernel. So it
    is used only where both of those would run; everywhere else (one rank, CPU/gloo, NCCL, the
    torch norms, sizes the fast all-reduce declines) it is exactly those two steps."""
    info = get_parallel_info()
    if info.world_size > 1 and info.fast_all_reduce is not None and norm.uses_kernel(partial):
        fused = info.fast_all_reduce.add_norm(partial, residual, norm)
        if fused is not None:
            return fused
    x = all_reduce(partial)
    return (norm(x), x) if residual is None else norm(x, residual)


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim` (all ranks get the result)."""
    info = get_parallel_info()
    if info.world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous(), group=info.group)
    return torch.cat(parts, dim=dim)
