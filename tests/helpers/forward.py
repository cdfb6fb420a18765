"""A minimal model runner for model tests: paged KV cache + flat-batch AttentionMetadata.

`prefill_logits(model, prompts, chunks=2)` feeds every prompt in `chunks` steps (each step one
flat batch holding the next piece of every prompt, earlier pieces already in the KV cache) and
returns the logits of every prompt position. The engine has its own runner; this one exists so
model tests do not depend on it.
"""

from __future__ import annotations

import torch
from torch import nn

from shardserve.layers.attention import Attention
from shardserve.layers.forward_context import AttentionMetadata, forward_context


class PagedCache:
    """KV cache for every Attention layer; sequence i owns blocks i*blocks_per_seq onwards."""

    def __init__(self, model: nn.Module, num_seqs: int, max_len: int, block_size: int = 4):
        self.block_size = block_size
        self.blocks_per_seq = -(-max_len // block_size)
        num_blocks = num_seqs * self.blocks_per_seq
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        for attn in (m for m in model.modules() if isinstance(m, Attention)):
            shape = (num_blocks, block_size, attn.num_kv_heads, attn.head_dim)
            # NaN-filled: a read of a slot never written shows up in the logits.
            attn.kv_cache = (
                torch.full(shape, float("nan"), dtype=dtype, device=device),
                torch.full(shape, float("nan"), dtype=dtype, device=device),
            )
        # [num_seqs, blocks_per_seq] int32; sequences' blocks listed in shuffled order so the
        # block table (not contiguity) decides where each token lives.
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0))
        self.block_tables = perm.view(num_seqs, self.blocks_per_seq).to(torch.int32).to(device)

    def slot(self, seq: int, position: int) -> int:
        block = int(self.block_tables[seq, position // self.block_size])
        return block * self.block_size + position % self.block_size


def step_metadata(cache: PagedCache, pieces: list[tuple[int, int, int]]) -> tuple[AttentionMetadata, torch.Tensor]:
    """pieces: (seq index, first new position, end position) per sequence in this step.

    Returns the metadata and the positions [T] of the step's flat batch.
    """
    positions, slots, starts, seq_lens = [], [], [0], []
    for seq, begin, end in pieces:
        positions.extend(range(begin, end))
        slots.extend(cache.slot(seq, p) for p in range(begin, end))
        starts.append(starts[-1] + end - begin)
        seq_lens.append(end)
    device = cache.block_tables.device
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=cache.block_tables[[seq for seq, _, _ in pieces]],
        max_query_len=max(e - b for _, b, e in pieces),
        max_seq_len=max(seq_lens),
        query_start_loc_host=starts,
        seq_lens_host=seq_lens,
    )
    return meta, torch.tensor(positions, dtype=torch.int64, device=device)


@torch.no_grad()
def prefill_logits(model: nn.Module, prompts: list[list[int]], chunks: int = 1) -> list[torch.Tensor]:
    """Logits [len(prompt), vocab] float32 per prompt, fed in `chunks` steps of a flat batch."""
    cache = PagedCache(model, len(prompts), max(map(len, prompts)))
    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    bounds = [[len(p) * c // chunks for c in range(chunks + 1)] for p in prompts]
    device = cache.block_tables.device
    for c in range(chunks):
        pieces = [(i, b[c], b[c + 1]) for i, b in enumerate(bounds) if b[c + 1] > b[c]]
        meta, positions = step_metadata(cache, pieces)
        ids = torch.tensor([t for i, lo, hi in pieces for t in prompts[i][lo:hi]], device=device)
        with forward_context(meta):
            logits = model.compute_logits(model(ids, positions))
        starts = meta.query_start_loc_host  # num_seqs + 1 offsets
        for (i, _, _), lo, hi in zip(pieces, starts, starts[1:], strict=False):
            out[i].append(logits[lo:hi])
    return [torch.cat(parts) for parts in out]
