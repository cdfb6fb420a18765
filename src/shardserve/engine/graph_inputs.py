"""The static inputs a CUDA graph reads, and the pinned host buffers a step stages them in.

One buffer of each per dtype: int64 [5, width] (input ids, positions, cache slots, then the ids'
rows whose token is still in flight and their rows in the previous step's tokens) and a flat int32
one (lengths and block tables, laid out by the graph kind). A step writes its values into the host buffers through numpy views and uploads
them with one contiguous copy per dtype: from a strided pinned source torch would gather into
pageable memory first, and that copy waits for the GPU.
"""

from __future__ import annotations

import numpy as np
import torch


class GraphInputs:
    def __init__(self, width: int, len32: int, device: torch.device):
        pin = device.type == "cuda"  # the CPU tests run the padded forward eagerly
        self.host64 = torch.zeros(5, width, dtype=torch.int64, pin_memory=pin)
        self.host32 = torch.zeros(len32, dtype=torch.int32, pin_memory=pin)
        self.dev64 = torch.zeros_like(self.host64, device=device)
        self.dev32 = torch.zeros_like(self.host32, device=device)
        self.dev64[2].fill_(-1)  # cache slot -1: padding writes no K/V
        self.np64, self.np32 = self.host64.numpy(), self.host32.numpy()
        # The host buffers may be rewritten once the last upload has been read.
        self._uploaded = torch.cuda.Event() if pin else None

    def writable(self) -> None:
        """Wait for the last upload (it finished long ago: the step after it has been launched)."""
        if self._uploaded is not None:
            self._uploaded.synchronize()

    def upload(self, len32: int, fill: tuple[list[int], torch.Tensor, list[int]] | None = None) -> None:
        """All of int64 and the first len32 entries of int32 to the device, without waiting.
        fill: (rows of the input ids whose token is in flight, the previous step's device tokens,
        their rows there): their indices go up in the same copy, the tokens are gathered on the
        device."""
        if fill is not None:
            k = len(fill[0])
            self.np64[3, :k], self.np64[4, :k] = fill[0], fill[2]
        self.dev64.copy_(self.host64, non_blocking=True)
        self.dev32[:len32].copy_(self.host32[:len32], non_blocking=True)
        if self._uploaded is not None:
            self._uploaded.record()
        if fill is not None:
            rows, sources = self.dev64[3, :k], self.dev64[4, :k]
            self.dev64[0].index_copy_(0, rows, fill[1].index_select(0, sources))


class BlockTableRows:
    """The block tables [rows, max_blocks] in the int32 host buffer, rewritten only where they
    changed. A table only grows until its request frees it, and a new table has a new table_id
    (kv_cache.BlockManager), so a row that held the same table last step takes just the blocks
    added since. Whole rows from Python lists cost O(context) a step, on every rank: a decode step
    of 64 sequences of 2000 tokens took 0.21 ms to stage that way on the idle 2-core CI machine,
    0.04 ms now (benchmarks/graph_staging.py)."""

    def __init__(self, tables: np.ndarray):
        self.tables = tables  # a view of GraphInputs.np32; nothing else writes it
        self._held = [(-1, 0)] * tables.shape[0]  # per row: (table_id, blocks written)

    def write(self, row: int, table_id: int, block_ids: list[int]) -> None:
        held, written = self._held[row]
        if held != table_id or table_id < 0:  # another table, or one without an id: all of it
            written = 0
        if len(block_ids) > written:
            self.tables[row, written : len(block_ids)] = block_ids[written:]
        self._held[row] = (table_id, len(block_ids))
