"""Vocabulary-parallel embedding and LM head.

Each rank owns a contiguous range of vocab_padded / tp rows, where vocab_padded rounds the
vocabulary up to a multiple of tp; padding rows are zero and never reach the caller:
embedding lookups of ids outside the rank's range are masked to zero before the all-reduce,
and compute_logits drops the padded columns after gathering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shardserve.layers.quant import dense_linear
from shardserve.parallel import get_tp_rank, get_tp_size
from shardserve.parallel.comm import all_gather, all_reduce
from shardserve.weights.params import Loaded, narrow, new_param


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
        self.weight = new_param(
            (self.rows_per_rank, embedding_dim), self.weight_loader, {None: (num_embeddings, embedding_dim)}
        )

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id=None) -> None:
        param.data[: self.num_real].copy_(narrow(loaded, 0, self.vocab_start, self.num_real))
        param.data[self.num_real :].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> [T, embedding_dim]."""
        if self.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_real)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return all_reduce(out)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, embedding_dim] -> float32 logits [N, num_embeddings] on every rank."""
        # [N, rows_per_rank]; decode-sized N on a GPU: the tuned path (cuBLAS or a faster kernel)
        logits = dense_linear(hidden, self.weight)
        if self.tp_size > 1:
            logits = all_gather(logits, dim=-1)[:, : self.num_embeddings]  # drop padding
        return logits.float()


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection of an untied model: same split, used only via compute_logits."""



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

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, dim] -> float32 logits [N, vocab_size], full vocab on every rank."""
        return self.lm_head.compute_logits(hidden)
