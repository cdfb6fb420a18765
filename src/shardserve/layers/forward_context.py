"""Per-forward attention metadata: the second (and last) piece of scoped global state.

The model runner builds one `AttentionMetadata` per step and enters `forward_context(meta)`
around the model call; every `Attention` layer reads it instead of having it threaded through
each model's forward signature.

A step's batch is flat: `num_tokens` new tokens from `num_seqs` sequences, prefills (many new
tokens, possibly after an already-cached prefix) and decodes (one new token) mixed freely.
Sequence i owns new tokens `query_start_loc[i]:query_start_loc[i+1]` and, after this step, has
`seq_lens[i]` tokens of context in the paged KV cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: KV-cache slot (block * block_size + offset); -1 = padding
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step (cached + new)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    # Host copies, so CPU-side loops in reference backends need no device sync.
    query_start_loc_host: list[int]
    seq_lens_host: list[int]

    @classmethod
    def for_graph_decode(cls, slot_mapping: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                         block_tables: torch.Tensor) -> AttentionMetadata:
        """One new token per sequence, with device values only: what a captured decode graph (or
        a warm-up forward on padding rows) runs on. Host copies are never read on that path."""
        bs = seq_lens.shape[0]
        return cls(slot_mapping, query_start_loc, seq_lens, block_tables, max_query_len=1, max_seq_len=1,
                   query_start_loc_host=list(range(bs + 1)), seq_lens_host=[0] * bs)

    @classmethod
    def for_graph_prefill(cls, slot_mapping: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                          block_tables: torch.Tensor, max_query_len: int) -> AttentionMetadata:
        """Any step, with device values only and `max_query_len` an upper bound: what a captured
        prefill graph runs on (engine/prefill_graphs.py). Host copies are never read on that path."""
        seqs = seq_lens.shape[0]
        return cls(slot_mapping, query_start_loc, seq_lens, block_tables, max_query_len=max_query_len,
                   max_seq_len=0, query_start_loc_host=[0] * (seqs + 1), seq_lens_host=[0] * seqs)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


# Per thread: a server process may step several engines (model copies) at once.
_local = threading.local()


@contextmanager
def forward_context(meta: AttentionMetadata) -> Iterator[None]:
    previous = getattr(_local, "context", None)
    _local.context = meta
    try:
        yield
    finally:
        _local.context = previous


def get_forward_context() -> AttentionMetadata:
    context = getattr(_local, "context", None)
    if context is None:
        raise RuntimeError("attention called outside forward_context(); the model runner sets it")
    return context
