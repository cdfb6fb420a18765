"""Logits for kernels/argmax.py, shared by the interpreter test (tests/unit/kernels) and tests/gpu:
several chunks with a ragged last one, ties across chunks and within one (in one lane and across
lanes), a row of -inf, an empty first chunk, NaN, the very last column and many ties."""

from __future__ import annotations

import torch

from shardserve.kernels.argmax import _BLOCK, _CHUNK, triton_argmax


def argmax_logits(device, rows: int = 8) -> torch.Tensor:
    vocab = 2 * _CHUNK + 37  # three chunks, the last one ragged
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(max(rows, 8), vocab, generator=gen)
    x[1, [5, _CHUNK + 3, 2 * _CHUNK + 1]] = 50.0  # a tie across three chunks: the first wins
    x[2, [_CHUNK + 700, _CHUNK + 9, _CHUNK + 9 + _BLOCK]] = 50.0
    x[3] = float("-inf")  # nothing to choose: 0
    x[4, :_CHUNK] = float("-inf")
    x[5, [9, _CHUNK + 4]] = float("nan")  # NaN counts as the largest: the first NaN
    x[6, 2 * _CHUNK + 36] = 1e30
    x[7] = torch.randint(0, 3, (vocab,), generator=gen).float()
    expected = x.argmax(dim=-1)
    assert expected[1] == 5 and expected[2] == _CHUNK + 9 and expected[3] == 0 and expected[5] == 9
    return x.to(device)


def check_argmax(device) -> None:
    """triton_argmax gives torch.argmax's indices: float32, float16, rows strided past the vocab."""
    x = argmax_logits(device, rows=64)
    assert torch.equal(triton_argmax(x), x.argmax(dim=-1))
    assert torch.equal(triton_argmax(x.half()), x.half().argmax(dim=-1))
    wide = torch.randn(3, 2 * x.shape[1], generator=torch.Generator().manual_seed(1)).to(device)[:, : x.shape[1]]
    assert torch.equal(triton_argmax(wide), wide.argmax(dim=-1))
