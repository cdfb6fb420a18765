"""Vocabulary-parallel embedding and LM head.

Each rank owns a contiguous range of vocab_padded / tp rows, where vocab_padded rounds the
vocabulary up to a multiple of tp; padding rows are zero and never reach the caller:
embedding lookups of ids outside the rank's range are masked to zero before the all-reduce,
and compute_logits drops the padded columns after gathering.

An embedding table stays in the model dtype, lookups read its rows; so does a tied LM head, which
is that table. The LM head of an untied model is an output projection only, and is stored and
multiplied like a linear layer, by the linear method the model is built with (layers/quant.py):
with quantization "int8" | "fp8" an 8-bit weight with per-row float32 scales, quantised slice by
slice as it loads. At decode it is the largest single weight (Llama-3-8B: 128256 x 4096, 1 GB
in bf16), so 8 bits save a good share of a step's reads. Past DECODE_MAX_TOKENS rows (logits of
more than 64 sequences at once, or of a whole prompt) an 8-bit head multiplies like any 8-bit
layer: a transient model-dtype copy of the rank's head (kernels/gemm_kernels.py "dequant"), or
on Hopper with fp8 and bf16 activations the fp8 GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shardserve.layers.linear import store_rows
from shardserve.layers.quant import UNQUANTIZED, LinearMethod, current_linear_method
from shardserve.parallel import get_tp_rank, get_tp_size
from shardserve.parallel.comm import all_gather, all_reduce
from shardserve.weights.params import Loaded, narrow


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, replicated: bool = False):
        """replicated=True: every rank holds all rows (small tables, e.g. OPT positions)."""
        super().__init__()
        self.tp_rank, self.tp_size = (0, 1) if replicated else (get_tp_rank(), get_tp_size())
        self.num_embeddings = num_embeddings
        self.rows_per_rank = -(-num_embeddings // self.tp_size)  # ceil
        self.vocab_start = self.tp_rank * self.rows_per_rank
        # Real (non-padding) rows on this rank; the last ranks may hold only padding.
        self.num_real = max(0, min(self.rows_per_rank, num_embeddings - self.vocab_start))
        self.quant_method = self._weight_method()
        self.quant_method.create_weights(
            self, (self.rows_per_rank, embedding_dim), self.weight_loader, {None: (num_embeddings, embedding_dim)}
        )

    def _weight_method(self) -> LinearMethod:
        """How the table is stored and multiplied by (compute_logits): lookups need the model dtype."""
        return UNQUANTIZED

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id=None) -> None:
        # store_rows: an 8-bit head quantises the rows as they come, and its padding rows like any
        # zero row (weight 0, scale tiny).
        rows = narrow(loaded, 0, self.vocab_start, self.num_real)
        store_rows(param, 0, rows)
        store_rows(param, self.num_real, rows.new_zeros((self.rows_per_rank - self.num_real, rows.shape[1])))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> [T, embedding_dim]."""
        if self.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_real)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return all_reduce(out)

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [N, embedding_dim] -> float32 logits [N, num_embeddings] on every rank; into
        out[:N] when given (the CUDA graphs' shared output, engine/cuda_graphs.py)."""
        # [N, rows_per_rank]; decode-sized N on a GPU: the tuned path (16-bit: cuBLAS or a faster
        # kernel; 8-bit: the 8-bit kernels)
        logits = self.quant_method.apply(self, hidden, None)
        if self.tp_size > 1:
            logits = all_gather(logits, dim=-1)[:, : self.num_embeddings]  # drop padding
        return logits.float() if out is None else out[: logits.shape[0]].copy_(logits)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection of an untied model: same split, used only via compute_logits, stored
    by the current linear method (8-bit in a quantised model)."""

    def _weight_method(self) -> LinearMethod:
        return current_linear_method()


class CausalLM(nn.Module):
    """Base of every *ForCausalLM model: a decoder stack plus the vocab-parallel LM head.

    The decoder is registered under `base_model_prefix` (HF's name for it, e.g. "model" or
    "transformer") so parameter names match checkpoint names. With tied embeddings the head is
    the input embedding module itself: one parameter, loaded once.
    """

    base_model_prefix: str
    # checkpoint module name -> (our packed module, shard id), used by the weight loader.
    packed_modules: dict = {}

    def __init__(self, config, decoder: nn.Module, embedding: VocabParallelEmbedding):
        super().__init__()
        self.config = config
        setattr(self, self.base_model_prefix, decoder)
        self.lm_head = (
            embedding if config.tie_word_embeddings
            else ParallelLMHead(embedding.num_embeddings, embedding.weight.shape[1])
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions [T] (a flat batch of many sequences) -> hidden [T, dim]."""
        return getattr(self, self.base_model_prefix)(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [N, dim] -> float32 logits [N, vocab_size], full vocab on every rank (into
        out[:N] when given)."""
        return self.lm_head.compute_logits(hidden, out)
