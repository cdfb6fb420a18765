"""ALiBi slopes (BLOOM): one per head, this rank's contiguous slice of heads."""

from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[num_heads] float32, HF BLOOM's `build_alibi_tensor` formula.

    For a power of two n: slopes 2^(-8/n * i), i = 1..n. Otherwise the closest lower power of two
    gives the first heads and every other slope of the next power of two the rest.
    """
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = torch.pow(
        torch.tensor(base, dtype=torch.float32, device=device),
        torch.arange(1, 1 + closest, dtype=torch.int32, device=device),
    )
    if closest != num_heads:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, num_heads - closest)
        extra = torch.pow(
            torch.tensor(extra_base, dtype=torch.float32, device=device),
            torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32, device=device),
        )
        slopes = torch.cat([slopes, extra])
    return slopes


def rank_alibi_slopes(num_heads: int, tp_rank: int, tp_size: int, device=None) -> torch.Tensor:
    """[num_heads / tp] float32: the slopes of the heads this rank owns (contiguous blocks)."""
    local = num_heads // tp_size
    return alibi_slopes(num_heads, device)[tp_rank * local : (tp_rank + 1) * local]
