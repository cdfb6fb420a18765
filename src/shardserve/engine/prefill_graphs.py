"""Short prefill (and mixed) steps replayed from CUDA graphs, one graph per token-count bucket.

Why: an eager forward launches each of its kernels from Python, a few hundred microseconds of
host time a layer, which for a short prompt is more than the GPU needs. Under tensor
parallelism each all-reduce then also waits for the slowest rank's host. Replayed, the whole
step is one launch: the first token of OPT-30B at TP4 (4 x 32 prompt tokens, 4x H200) took
9.6 ms against 65.3 eagerly (benchmarks/RESULTS.md).

A bucket holds `tokens` tokens of at most `max_seqs` sequences. A step is padded to its bucket:
tokens past its own have cache slot -1 (no cache write) and belong to no sequence, so no query
reads them and their rows never meet another row (every op between attentions is row-wise);
sequences past its own have an empty query range and no context, so the attention programs
for them return at once. The prefill attention kernel takes its grid from the bucket's token
count (an upper bound of the longest query) and `max_seqs`, and reads every length from the
device: nothing captured depends on a host value of the step. The LM head runs on each
sequence's last token, gathered on the device. Steps of more tokens run eagerly (the host's
share of them is small).

A bucket is (tokens, sequences). Under continuous batching a new prompt joins a full batch of
decodes, and such a mixed step ran 4x longer eagerly at TP4: so each token count has a graph of
max_num_seqs sequences (capped at the token count). Benchmarks/mixed_steps.py (OPT-30B TP4, 256
requests, 64 at a time) measured 2.3x the output tokens/s of eager mixed steps. But the attention
grid grows with the bucket's sequences whether the step has them or not, so steps of at most
FEW_SEQS sequences (a few prompts alone) keep graphs of that many, the form that took OPT-30B
TP4's 4 x 32-token first token to 9.6 ms. Token buckets go by 32 up to 256, then by 64, so a
mixed step pads its GEMM rows by at most a quarter past 128 tokens (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shardserve.engine.cuda_graphs import capture_buckets
from shardserve.engine.graph_inputs import BlockTableRows, GraphInputs
from shardserve.engine.scheduler import ScheduledSeq
from shardserve.layers.forward_context import AttentionMetadata, forward_context

logger = logging.getLogger(__name__)

TOKEN_BUCKETS = (16, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
FEW_SEQS = 8


def prefill_graph_buckets(max_num_batched_tokens: int) -> list[int]:
    """The token counts of the graphs: no step holds more than max_num_batched_tokens."""
    return [t for t in TOKEN_BUCKETS if t <= max_num_batched_tokens] or [max_num_batched_tokens]


class PrefillGraphs:
    def __init__(self, model: nn.Module, device: torch.device, max_num_seqs: int, max_num_batched_tokens: int,
                 max_blocks_per_seq: int, logits: torch.Tensor):
        self.model = model
        self.device = device
        self.logits_out = logits  # cuda_graphs.logits_buffer(): rows >= max_num_seqs
        self.token_buckets = prefill_graph_buckets(max_num_batched_tokens)
        self.max_seqs = max_num_seqs
        seq_counts = {min(FEW_SEQS, max_num_seqs), max_num_seqs}
        self.buckets = sorted({(t, min(s, t)) for t in self.token_buckets for s in seq_counts})
        self.max_blocks = max_blocks_per_seq
        t, s, mb = self.token_buckets[-1], self.max_seqs, max_blocks_per_seq
        # int32 [2s + 1 + s * mb]: query start offsets, seq_lens, block tables [s, mb].
        self.inputs = GraphInputs(t, 2 * s + 1 + s * mb, device)
        self.tables = BlockTableRows(self.inputs.np32[2 * s + 1 :].reshape(s, mb))
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.capture_seconds = 0.0

    def _meta(self, tokens: int, seqs: int) -> AttentionMetadata:
        """The first `seqs` sequences' views of the static inputs (laid out for max_seqs)."""
        s, dev32 = self.max_seqs, self.inputs.dev32
        return AttentionMetadata.for_graph_prefill(
            self.inputs.dev64[2, :tokens], dev32[: seqs + 1], dev32[s + 1 : s + 1 + seqs],
            dev32[2 * s + 1 :].view(s, self.max_blocks)[:seqs], max_query_len=tokens,
        )

    def forward(self, bucket: tuple[int, int]) -> torch.Tensor:
        """Logits [sequences, vocab] float32 of each sequence's last token, from the static inputs
        (what a graph captures; eager on the CPU, where the tests run it)."""
        tokens, seqs = bucket
        meta = self._meta(tokens, seqs)
        with forward_context(meta):
            hidden = self.model(self.inputs.dev64[0, :tokens], self.inputs.dev64[1, :tokens])
            last = (meta.query_start_loc[1:] - 1).clamp(min=0).long()  # a padding sequence: any row
            return self.model.compute_logits(hidden.index_select(0, last), self.logits_out)  # all_gather under TP

    @torch.inference_mode()
    def capture(self, pool) -> None:
        """Every bucket into `pool` (shared with the decode graphs: graphs replay one at a time, so
        their working memory may overlap). Inputs are padding only, here."""
        started = time.perf_counter()
        self.graphs = capture_buckets(self.buckets, self.forward, self.device, pool)
        self.capture_seconds = time.perf_counter() - started
        logger.info("captured %d prefill CUDA graphs (tokens %s; %d or up to %d sequences) in %.1f s",
                    len(self.graphs), self.token_buckets, min(FEW_SEQS, self.max_seqs), self.max_seqs,
                    self.capture_seconds)

    def can_run(self, seqs: Sequence[ScheduledSeq]) -> bool:
        return (
            0 < len(seqs) <= self.max_seqs
            and sum(len(s.token_ids) for s in seqs) <= self.token_buckets[-1]
            and all(len(s.block_ids) <= self.max_blocks for s in seqs)
        )

    def bucket(self, num_seqs: int, num_tokens: int) -> tuple[int, int]:
        """The smallest bucket that holds the step: fewest tokens, then fewest sequences."""
        return next((t, s) for t, s in self.buckets if t >= num_tokens and s >= num_seqs)

    def stage(self, seqs: Sequence[ScheduledSeq], block_size: int,
              fill: tuple[list[int], torch.Tensor, list[int]] | None = None) -> tuple[int, int]:
        """Copy the step's inputs into the static buffers, padded, and fill its placeholders (as
        run's); -> its bucket."""
        self.inputs.writable()
        s, n, np32 = self.max_seqs, len(seqs), self.inputs.np32
        ids, pos, slots = self.inputs.np64[:3]
        starts, seq_lens = np32[: s + 1], np32[s + 1 : 2 * s + 1]
        # Whole-step numpy ops, not a loop of them per sequence: a step may hold max_num_seqs.
        lens = np.fromiter((len(q.token_ids) for q in seqs), np.int64, n)
        begins = np.fromiter((q.start_pos for q in seqs), np.int64, n)
        at = int(lens.sum())
        first_rows = np.cumsum(lens) - lens
        starts[:n], seq_lens[:n] = first_rows, begins + lens
        ids[:at] = np.fromiter(itertools.chain.from_iterable(q.token_ids for q in seqs), np.int64, at)
        seq_of_row = np.repeat(np.arange(n), lens)
        positions = pos[:at]
        positions[:] = np.arange(at) + np.repeat(begins - first_rows, lens)
        for i, q in enumerate(seqs):
            self.tables.write(i, q.table_id, q.block_ids)
        blocks = self.tables.tables[seq_of_row, positions // block_size].astype(np.int64)
        slots[:at] = blocks * block_size + positions % block_size
        bucket = self.bucket(len(seqs), at)
        tokens = bucket[0]
        ids[at:tokens], pos[at:tokens], slots[at:tokens] = 0, 0, -1
        starts[n:], seq_lens[n:] = at, 0
        if fill is not None:  # a placeholder is its sequence's only token: at its first row
            fill = (first_rows[fill[0]].tolist(), fill[1], fill[2])
        self.inputs.upload(2 * s + 1 + len(seqs) * self.max_blocks, fill)  # every start and seq_len, the step's tables
        return bucket

    @torch.inference_mode()
    def run(self, seqs: Sequence[ScheduledSeq], block_size: int,
            fill: tuple[list[int], torch.Tensor, list[int]] | None = None) -> torch.Tensor:
        """Logits [len(seqs), vocab] float32 (a view of the graph's static output). fill: (indices
        of the sequences whose only token is a placeholder, the previous step's device tokens,
        their rows there)."""
        bucket = self.stage(seqs, block_size, fill)
        self.graphs[bucket].replay()
        return self.logits_out[: len(seqs)]
