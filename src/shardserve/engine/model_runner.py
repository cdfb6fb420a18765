"""One tensor-parallel rank: its model slice, its KV cache, and its sampler (rank 0's only, or
every rank's under asynchronous scheduling).

Every rank runs the same `execute_model` on the same SchedulerOutput (plain lists of ints), so
the collectives inside the model line up; rank 0 returns the sampled tokens.

Asynchronous scheduling (`execute_model_async`): the step is launched and the call returns the
*previous* step's tokens (engine/pending_step.py), whose wait overlaps this step's GPU work. This
step's input tokens that the previous one sampled arrive as PLACEHOLDERs and are filled in on the
device from its sampled tokens (as is the newest token the penalties count), so every rank
samples (identically: same logits, same generators).
"""

from __future__ import annotations

import logging
import time

import torch

from shardserve.config import EngineConfig, torch_dtype
from shardserve.engine import kv_budget, prompt_logprobs
from shardserve.engine.cuda_graphs import DecodeGraphs, logits_buffer
from shardserve.engine.pending_step import (
    HostBufferPair,
    PendingStep,
    fill_placeholders,
    placeholder_sources,
)
from shardserve.engine.prefill_graphs import PrefillGraphs, prefill_graph_buckets
from shardserve.engine.profiler import RankProfiler
from shardserve.engine.prompt_logprobs import StepResult
from shardserve.engine.sampler import Sampler, on_device
from shardserve.engine.scheduler import ScheduledSeq, SchedulerOutput
from shardserve.kernels import int8_mma, set_fused_kernels
from shardserve.kernels.pdl import set_pdl
from shardserve.kernels.tuned_gemm import DECODE_MAX_TOKENS
from shardserve.layers.attention import Attention, set_default_attention_backend
from shardserve.layers.forward_context import AttentionMetadata, forward_context
from shardserve.models import load_model
from shardserve.models.config import ModelConfig
from shardserve.weights.fast_read import LoadStats

logger = logging.getLogger(__name__)

def resolve_dtype(requested: str, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    """'auto' keeps the checkpoint's dtype on GPUs and uses float32 on CPUs."""
    if requested != "auto":
        return torch_dtype(requested)
    if device.type == "cpu":
        return torch.float32
    return torch_dtype(checkpoint_dtype) if checkpoint_dtype else torch.bfloat16


class ModelRunner:
    def __init__(self, config: EngineConfig, rank: int, device: torch.device):
        self.config = config
        self.rank = rank
        self.device = device
        self.model_config = ModelConfig.from_hf(config.model)
        self.dtype = resolve_dtype(config.dtype, self.model_config.torch_dtype, device)
        backend = config.attention_backend
        if backend == "auto":
            backend = "triton" if device.type == "cuda" else "torch"
        set_default_attention_backend(backend)
        # The torch backend is the reference end to end; extra={"fused_kernels": False} measures
        # what the small fused kernels (norm, rotary, SiLU-mul) buy.
        self.fused_kernels = backend == "triton" and config.extra.get("fused_kernels", True)
        set_fused_kernels(self.fused_kernels)
        set_pdl(config.extra.get("pdl", True))  # kernels/pdl.py: launches overlap their predecessor's tail
        int8_mma.set_enabled(config.extra.get("int8_mma", True))  # a tuner candidate for int8 decode GEMMs
        # Decode CUDA graphs need kernels that read no per-step host values (triton backend).
        self.use_cuda_graphs = device.type == "cuda" and backend == "triton" and not config.enforce_eager
        self.cuda_graphs: DecodeGraphs | None = None
        # Short prefill and mixed steps too (engine/prefill_graphs.py); extra.prefill_graphs=false
        # runs them eagerly.
        self.prefill_graphs: PrefillGraphs | None = None
        self.tuning_seconds = 0.0
        torch.manual_seed(config.seed)
        self.load_stats = LoadStats()
        self.model = load_model(
            self.model_config, config.model, self.dtype, device, config.load_format, seed=config.seed,
            quantization=config.quantization, stats=self.load_stats,
        )
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.block_size = config.block_size
        # Synchronous steps sample on rank 0 only; asynchronous ones on every rank.
        self.sampler = Sampler(device, config.seed) if rank == 0 or config.async_scheduling else None
        self._pending: PendingStep | None = None
        # Rank 0 is the only one that reads its sampled tokens back.
        self._host_buffers = HostBufferPair(config.max_num_seqs, device) if rank == 0 else None
        self.profiler = RankProfiler(rank, device)

    # -- KV cache (sizing: engine/kv_budget.py) ---------------------------------------------
    def bytes_per_block(self) -> int:
        return kv_budget.block_bytes(self.attention_layers, self.block_size, self.dtype)

    def available_kv_blocks(self, max_model_len: int) -> int:
        """How many blocks every rank can hold (the minimum over the ranks)."""
        fits = kv_budget.blocks_that_fit(self.config, self.model_config, self.device, self.bytes_per_block(),
                                         max_model_len, self._graph_tokens())
        return kv_budget.min_over_ranks(fits, self.device)

    def _use_prefill_graphs(self) -> bool:
        return self.use_cuda_graphs and self.config.extra.get("prefill_graphs", True)

    def _graph_tokens(self) -> int:
        """The most rows a CUDA graph computes: a decode graph's max_num_seqs, a prefill graph's
        largest bucket (kv_budget keeps room for them)."""
        if not self.use_cuda_graphs:
            return 0
        prefill = prefill_graph_buckets(self.config.max_num_batched_tokens)[-1] if self._use_prefill_graphs() else 0
        return max(self.config.max_num_seqs, prefill)

    def allocate_kv_cache(self, num_blocks: int, max_model_len: int) -> None:
        for layer in self.attention_layers:
            shape = (num_blocks, self.block_size, layer.num_kv_heads, layer.head_dim)
            layer.kv_cache = (
                torch.empty(shape, dtype=self.dtype, device=self.device),
                torch.empty(shape, dtype=self.dtype, device=self.device),
            )
        logger.info(
            "rank %d: KV cache of %d blocks x %d tokens (%.2f GiB)",
            self.rank, num_blocks, self.block_size, num_blocks * self.bytes_per_block() / 2**30,
        )
        if self.device.type == "cuda" and self.fused_kernels:
            self.tuning_seconds = self._tune_decode_gemms()
        if self.use_cuda_graphs:  # warm-up: capture once the cache the graphs read exists
            max_blocks = -(-max_model_len // self.block_size)  # block-table width
            # One pool and one logits buffer: graphs replay one at a time (engine/cuda_graphs.py).
            pool = torch.cuda.graph_pool_handle()
            logits = logits_buffer(self.model, self.config.max_num_seqs, self.device)
            self.cuda_graphs = DecodeGraphs(self.model, self.device, self.config.max_num_seqs, max_blocks, logits)
            self.cuda_graphs.capture(pool)
            if self._use_prefill_graphs():
                self.prefill_graphs = PrefillGraphs(self.model, self.device, self.config.max_num_seqs,
                                                    self.config.max_num_batched_tokens, max_blocks, logits)
                self.prefill_graphs.capture(pool)

    @torch.inference_mode()
    def _tune_decode_gemms(self) -> float:
        """One eager forward per row class of the tuned decode GEMMs (1, 2, 4 ... 64 rows) on
        padding rows (slot -1, length 0: no cache write or read), so that every layer shape is
        tuned now (kernels/tuned_gemm.py) and not on the first request that brings a new batch
        size. Every rank runs the same forwards, so their collectives line up."""
        started, dev = time.perf_counter(), self.device
        rows = 1
        while rows <= DECODE_MAX_TOKENS:
            meta = AttentionMetadata.for_graph_decode(
                slot_mapping=torch.full((rows,), -1, dtype=torch.int64, device=dev),
                query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=dev),
                seq_lens=torch.zeros(rows, dtype=torch.int32, device=dev),
                block_tables=torch.zeros(rows, 1, dtype=torch.int32, device=dev),
            )
            ids = torch.zeros(rows, dtype=torch.int64, device=dev)
            with forward_context(meta):
                self.model.compute_logits(self.model(ids, ids))
            rows *= 2
        torch.cuda.synchronize(dev)
        return time.perf_counter() - started

    def start_profile(self, out_dir: str) -> None:
        self.profiler.start(out_dir)

    def stop_profile(self) -> list[str]:
        return self.profiler.stop()

    def load_phases(self) -> dict:
        """This rank's load: seconds per phase and bytes read (weights/fast_read.LoadStats)."""
        return self.load_stats.as_dict()

    def warmup_seconds(self) -> float:
        """Time spent tuning decode GEMMs and capturing CUDA graphs (reported apart from loading)."""
        graphs = (g.capture_seconds for g in (self.cuda_graphs, self.prefill_graphs) if g is not None)
        return self.tuning_seconds + sum(graphs)

    # -- one step ----------------------------------------------------------------------------
    def execute_model(self, sched: SchedulerOutput) -> StepResult | None:
        """Run a step and return its tokens and prompt logprobs (rank 0; None elsewhere)."""
        assert self._pending is None, "a synchronous step while an asynchronous one is in flight"
        return self._result(self._launch(sched, None))

    def execute_model_async(self, sched: SchedulerOutput) -> StepResult | None:
        """Launch a step; return the previous one's results (rank 0, empty if there was none)."""
        previous, self._pending = self._pending, None
        self._pending = self._launch(sched, previous)
        return self._result(previous)

    def collect(self) -> StepResult | None:
        """The results of the step in flight, if any (rank 0)."""
        previous, self._pending = self._pending, None
        return self._result(previous)

    def _result(self, step: PendingStep | None) -> StepResult | None:
        if self.rank != 0:
            return None
        return step.result() if step is not None else StepResult()

    @torch.inference_mode()
    def _launch(self, sched: SchedulerOutput, previous: PendingStep | None) -> PendingStep | None:
        """Enqueue the step's GPU work (and its sampling); nothing here waits for the GPU."""
        if self.sampler is not None and sched.finished_ids:
            self.sampler.forget(sched.finished_ids)
        if not sched.seqs:
            return None
        fill = placeholder_sources(sched.seqs, previous)
        sampling_rows = [i for i, s in enumerate(sched.seqs) if s.sampling]
        # The graphs compute each sequence's last row only: prompt-logprob rows need the eager path.
        eager = any(s.prompt_rows is not None for s in sched.seqs)
        graphs = None if eager else next(
            (g for g in (self.cuda_graphs, self.prefill_graphs) if g is not None and g.can_run(sched.seqs)), None)
        prompt = None
        if graphs is not None:
            logits = graphs.run(sched.seqs, self.block_size, fill)  # [num_seqs, vocab]
            if len(sampling_rows) < len(sched.seqs):  # a prefill chunk that samples nothing
                logits = logits[on_device(sampling_rows, torch.int64, self.device)]
        else:
            input_ids, positions, meta = self._prepare(sched)
            if fill is not None:
                first = meta.query_start_loc_host  # a placeholder is its sequence's only token
                fill_placeholders(input_ids, [first[i] for i in fill[0]], fill)
            with forward_context(meta):
                hidden = self.model(input_ids, positions)
            if eager:  # every rank, before the sampling rows: their collectives line up
                prompt = prompt_logprobs.launch(self.model, hidden, sched.seqs, meta.query_start_loc_host,
                                                read=self._host_buffers is not None)
            sample_idx = [meta.query_start_loc_host[i + 1] - 1 for i in sampling_rows]
            if not sample_idx:
                return PendingStep.prompt_only(prompt)
            rows = on_device(sample_idx, torch.int64, self.device)
            logits = self.model.compute_logits(hidden.index_select(0, rows))  # collective on TP
        if self.sampler is None or not sampling_rows:
            return PendingStep.prompt_only(prompt)
        sampled = [sched.seqs[i] for i in sampling_rows]
        ids, infos = [s.request_id for s in sampled], [s.sampling for s in sampled]
        last = self._last_token_ids(sampled, sampling_rows, fill)
        host = self._host_buffers.next() if self._host_buffers is not None else None
        return PendingStep(ids, infos, *self.sampler.sample(logits, ids, infos, last), host, prompt)

    def _last_token_ids(self, sampled: list[ScheduledSeq], sampling_rows: list[int],
                        fill: tuple[list[int], torch.Tensor, list[int]] | None) -> torch.Tensor | None:
        """[len(sampled)] int64 on the device: each sampling sequence's newest token, a token in
        flight taken from the previous step's device tokens (`fill`, the step's placeholder
        sources), as its input was. Only penalties need them (the sampler adds them to the tokens
        it counts): None without one."""
        if not any(s.sampling.has_penalty for s in sampled):
            return None
        last = on_device([s.token_ids[-1] for s in sampled], torch.int64, self.device)
        if fill is not None:  # a placeholder is its sequence's only token, so its last; it samples
            row_of = {seq: row for row, seq in enumerate(sampling_rows)}
            fill_placeholders(last, [row_of[i] for i in fill[0]], fill)
        return last

    @torch.inference_mode()
    def prompt_logits(self, token_ids: list[int], block_ids: list[int]) -> torch.Tensor | None:
        """float32 logits [len(token_ids), vocab] at every position of one prompt, on the CPU
        (rank 0; None elsewhere), for correctness checks against transformers. The caller owns
        `block_ids` (allocated from the BlockManager): their cache contents are overwritten."""
        seq = ScheduledSeq("prompt_logits", list(token_ids), 0, list(block_ids), None)
        input_ids, positions, meta = self._prepare(SchedulerOutput(seqs=[seq]))
        with forward_context(meta):
            logits = self.model.compute_logits(self.model(input_ids, positions))
        return logits.cpu() if self.rank == 0 else None

    def _prepare(self, sched: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        seqs = sched.seqs
        q_lens = torch.tensor([len(s.token_ids) for s in seqs])
        starts = torch.tensor([s.start_pos for s in seqs])
        query_start_loc = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        query_start_loc[1:] = q_lens.cumsum(0)
        seq_lens = (starts + q_lens).to(torch.int32)
        max_blocks = max(len(s.block_ids) for s in seqs)
        block_tables = torch.tensor(
            [s.block_ids + [0] * (max_blocks - len(s.block_ids)) for s in seqs], dtype=torch.int32
        )

        # Per token: which sequence it belongs to, its position, and its cache slot.
        seq_idx = torch.repeat_interleave(torch.arange(len(seqs)), q_lens)
        num_tokens = int(query_start_loc[-1])
        positions = torch.arange(num_tokens) - query_start_loc[:-1].long()[seq_idx] + starts[seq_idx]
        blocks = block_tables[seq_idx, positions // self.block_size].long()
        slot_mapping = blocks * self.block_size + positions % self.block_size
        input_ids = torch.tensor([t for s in seqs for t in s.token_ids], dtype=torch.long)

        dev = self.device

        def upload(t: torch.Tensor) -> torch.Tensor:  # pinned: a pageable copy waits for the GPU
            return (t.pin_memory() if dev.type == "cuda" else t).to(dev, non_blocking=True)

        meta = AttentionMetadata(
            slot_mapping=upload(slot_mapping),
            query_start_loc=upload(query_start_loc),
            seq_lens=upload(seq_lens),
            block_tables=upload(block_tables),
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
            query_start_loc_host=query_start_loc.tolist(),
            seq_lens_host=seq_lens.tolist(),
        )
        return upload(input_ids), upload(positions), meta
