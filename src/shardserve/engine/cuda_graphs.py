"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step of a large model is hundreds of small kernel launches; from Python each costs
several microseconds of CPU time, often more than the kernel itself. Capturing the whole step
(model forward with its tensor-parallel collectives, then the LM head) once per bucket and
replaying it leaves the CPU one replay call per step.

What makes replay valid: every input lives in a static device buffer that the graph reads
(ids, positions, cache slots, context lengths, block tables); a step copies its values in with
one host-to-device copy per dtype from pinned staging buffers (engine/graph_inputs.py), and pads
the bucket with harmless rows (slot -1: no cache write; seq_len 0: no cache read, output 0).
The attention kernels read lengths from the device only (kernels/paged_decode.py), so nothing in
the graph depends on a host value that changes between steps. All ranks capture the same buckets
in the same order, so their collectives line up. Input tokens still in flight (asynchronous
scheduling) are copied into the static ids from the previous step's sampled tokens on the device,
before the replay.

Every graph, decode or prefill, writes its logits into one shared buffer (logits_buffer). Graphs
replay one at a time on one stream, and a step's sampling is enqueued right after its replay,
so the next replay cannot overwrite logits still to be read. Per-graph outputs would keep one
[rows, vocab] float32 tensor per bucket alive: 0.58 GB for Llama-3's vocabulary at 64 sequences.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import nn

from shardserve.engine.graph_inputs import BlockTableRows, GraphInputs
from shardserve.engine.scheduler import ScheduledSeq
from shardserve.layers.forward_context import AttentionMetadata, forward_context

logger = logging.getLogger(__name__)


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 (vLLM's choice: padding wastes at most 7 rows of a bucket)."""
    sizes = [b for b in (1, 2, 4) if b < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


def logits_buffer(model: nn.Module, rows: int, device: torch.device) -> torch.Tensor:
    """The graphs' shared output: [rows, vocab] float32."""
    return torch.empty(rows, model.lm_head.num_embeddings, dtype=torch.float32, device=device)


def capture_buckets(buckets: Sequence, forward, device: torch.device, pool) -> dict:
    """forward(bucket) captured once per bucket into `pool`, largest first (the smaller ones reuse
    its pool memory), each after an eager run (Triton compilation, cuBLAS workspaces) ->
    {bucket: CUDAGraph}. The output is the shared logits buffer's rows (logits_buffer)."""
    graphs = {}
    for bucket in sorted(buckets, reverse=True):
        forward(bucket)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            forward(bucket)
        graphs[bucket] = graph
    torch.cuda.synchronize(device)
    return graphs


class DecodeGraphs:
    def __init__(self, model: nn.Module, device: torch.device, max_num_seqs: int, max_blocks_per_seq: int,
                 logits: torch.Tensor):
        self.model = model
        self.logits_out = logits  # logits_buffer(): rows >= max_num_seqs
        self.device = device
        self.buckets = batch_buckets(max_num_seqs)
        self.max_bs = self.buckets[-1]
        self.max_blocks = max_blocks_per_seq
        n, mb = self.max_bs, max_blocks_per_seq
        # int32 [n + n * mb]: seq_lens, then block tables [n, mb].
        self.inputs = GraphInputs(n, n + n * mb, device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)  # token i = seq i
        self.tables = BlockTableRows(self.inputs.np32[n:].reshape(n, mb))
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_seconds = 0.0

    # -- capture (once, after the KV cache exists) ------------------------------------------
    def _meta(self, bs: int) -> AttentionMetadata:
        n, dev64, dev32 = self.max_bs, self.inputs.dev64, self.inputs.dev32
        return AttentionMetadata.for_graph_decode(
            dev64[2, :bs], self.query_start_loc[: bs + 1], dev32[:bs], dev32[n:].view(n, self.max_blocks)[:bs],
        )

    def _forward(self, bs: int) -> torch.Tensor:
        with forward_context(self._meta(bs)):
            hidden = self.model(self.inputs.dev64[0, :bs], self.inputs.dev64[1, :bs])
            return self.model.compute_logits(hidden, self.logits_out)  # [bs, vocab]; all_gather under TP

    @torch.inference_mode()
    def capture(self, pool) -> None:
        """Every bucket into `pool` (torch.cuda.graph_pool_handle())."""
        started = time.perf_counter()
        self.graphs = capture_buckets(self.buckets, self._forward, self.device, pool)
        self.capture_seconds = time.perf_counter() - started
        logger.info("captured %d decode CUDA graphs (batch %s) in %.1f s",
                    len(self.graphs), self.buckets, self.capture_seconds)

    # -- replay (every decode step) ----------------------------------------------------------
    def can_run(self, seqs: Sequence[ScheduledSeq]) -> bool:
        return (
            0 < len(seqs) <= self.max_bs
            and all(len(s.token_ids) == 1 and len(s.block_ids) <= self.max_blocks for s in seqs)
        )

    @torch.inference_mode()
    def run(
        self, seqs: Sequence[ScheduledSeq], block_size: int,
        fill: tuple[list[int], torch.Tensor, list[int]] | None = None,
    ) -> torch.Tensor:
        """Logits [len(seqs), vocab] float32 (a view of the graph's static output). fill: (seq
        indices whose token is a placeholder, previous step's device tokens, their rows there)."""
        n = len(seqs)
        bs = next(b for b in self.buckets if b >= n)
        self.inputs.writable()
        np64 = self.inputs.np64
        ids, pos, slots = np64[0], np64[1], np64[2]
        seq_lens = self.inputs.np32[: self.max_bs]
        for i, s in enumerate(seqs):
            p = s.start_pos
            ids[i] = s.token_ids[0]
            pos[i] = p
            slots[i] = s.block_ids[p // block_size] * block_size + p % block_size
            seq_lens[i] = p + 1
            self.tables.write(i, s.table_id, s.block_ids)
        ids[n:bs], pos[n:bs], slots[n:bs], seq_lens[n:bs] = 0, 0, -1, 0
        # Every seq_len and the bucket's tables; a placeholder's row is its sequence's index.
        self.inputs.upload(self.max_bs + bs * self.max_blocks, fill)
        self.graphs[bs].replay()
        return self.logits_out[:n]
