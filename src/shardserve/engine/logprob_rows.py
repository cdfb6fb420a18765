"""The layout in which log-probabilities go to the host in one copy: per row, the chosen
token's logprob, then the k most likely tokens' logprobs, then their ids (exact in float32 below
2^24). The sampler's rows (generated tokens) and prompt logprobs' rows share it."""

from __future__ import annotations

import torch


def pack(logprobs: torch.Tensor, chosen: torch.Tensor, k: int) -> torch.Tensor:
    """logprobs [rows, vocab] float32, chosen [rows] token ids -> [rows, 1 + 2k] float32."""
    picked = logprobs.gather(1, chosen[:, None])
    if not k:
        return picked
    top = logprobs.topk(k, dim=-1)
    return torch.cat([picked, top.values, top.indices.float()], dim=1)


def top_of(row: list[float], width: int, n: int) -> list[tuple[int, float]]:
    """The n most likely (token id, logprob) of a packed row read to the host, `width` its
    columns, most likely first."""
    k = (width - 1) // 2
    return [(int(row[1 + k + j]), row[1 + j]) for j in range(n)]
