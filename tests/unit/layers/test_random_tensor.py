"""The lazily generated random tensor behind load_format="random"."""

from __future__ import annotations

import torch

from shardserve.weights.params import narrow
from shardserve.weights.random_init import BLOCK_ROWS, RandomTensor


def _tensor(shape, seed=7):
    return RandomTensor(shape, seed, std=0.5, dtype=torch.float32, device="cpu")


def test_any_slice_is_the_same_part_of_the_full_tensor():
    lazy = _tensor((2 * BLOCK_ROWS + 100, 8))
    full = lazy[:]
    assert full.shape == (2 * BLOCK_ROWS + 100, 8) and 0.45 < full.std() < 0.55
    for start, length in [(0, 5), (BLOCK_ROWS - 3, 10), (BLOCK_ROWS, BLOCK_ROWS + 100), (17, 0)]:
        assert torch.equal(narrow(lazy, 0, start, length), full[start : start + length])
    assert torch.equal(narrow(lazy, 1, 2, 3), full[:, 2:5])
    assert torch.equal(_tensor((2 * BLOCK_ROWS + 100, 8))[:], full)  # deterministic
    assert not torch.equal(_tensor((2 * BLOCK_ROWS + 100, 8), seed=8)[:], full)


def test_one_dimensional():
    lazy = _tensor((300,))
    assert torch.equal(narrow(lazy, 0, 100, 50), lazy[:][100:150])
