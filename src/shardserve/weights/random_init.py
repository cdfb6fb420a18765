"""Random weights created directly on the device, for benchmarks without a checkpoint.

Deterministic per seed, and identical across tensor-parallel ranks for the same logical weight:
each (parameter, shard) gets its own seed from its name, and the full logical tensor is
defined block by block (BLOCK_ROWS rows per block, each block from its own generator). A rank
asks for its slice through the ordinary weight_loader, and only the blocks covering the rows it
needs are generated. Cost: a row slice (column-parallel, vocab-parallel) generates only its
rows; a column slice (row-parallel) generates every row but one block at a time, so the extra
device memory is one block of full rows (BLOCK_ROWS x in_features) and each rank spends the
compute of the whole tensor - on a GPU a negligible part of a load.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

BLOCK_ROWS = 1024
DEFAULT_STD = 0.02


class RandomTensor:
    """A lazily generated normal(0, std) tensor with the slice interface of safetensors."""

    def __init__(self, shape: tuple[int, ...], seed: int, std: float, dtype: torch.dtype, device):
        self.shape, self.seed, self.std, self.dtype, self.device = tuple(shape), seed, std, dtype, device

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def __getitem__(self, index) -> torch.Tensor:
        index = index if isinstance(index, tuple) else (index,)
        rows = range(self.shape[0])[index[0]]
        assert rows.step == 1, "only contiguous slices"
        first, last = rows.start // BLOCK_ROWS, (rows.stop - 1) // BLOCK_ROWS if len(rows) else -1
        parts = []
        for block in range(first, last + 1):
            lo = block * BLOCK_ROWS
            full = self._block(block)  # [<= BLOCK_ROWS, *shape[1:]]
            part = full[max(rows.start - lo, 0) : rows.stop - lo]
            parts.append(part[(slice(None), *index[1:])])
        if not parts:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def _block(self, block: int) -> torch.Tensor:
        n = min(BLOCK_ROWS, self.shape[0] - block * BLOCK_ROWS)
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + block)
        out = torch.empty((n, *self.shape[1:]), dtype=torch.float32, device=self.device)
        return out.normal_(0.0, self.std, generator=gen).to(self.dtype)


def random_tensor(
    seed: int, name: str, shard_id, shape, dtype: torch.dtype, device, std: float = DEFAULT_STD
) -> RandomTensor:
    """The full logical tensor of one (parameter, shard): the same for every rank and engine."""
    return RandomTensor(shape, zlib.crc32(f"{seed}:{name}:{shard_id}".encode()), std, dtype, device)


def init_random_weights(model: nn.Module, seed: int = 0, std: float = DEFAULT_STD) -> None:
    """Fill every parameter of a materialised model; norms get their constant (1 or 0)."""
    for name, param in model.named_parameters():
        fill = getattr(param, "random_fill", None)
        if fill is not None:
            param.data.fill_(fill)
            continue
        for shard_id, shape in param.shard_shapes.items():
            # An 8-bit weight quantises what its loader is given: generate in the model dtype.
            dtype = getattr(param, "checkpoint_dtype", param.dtype)
            param.weight_loader(param, random_tensor(seed, name, shard_id, shape, dtype, param.device, std), shard_id)
