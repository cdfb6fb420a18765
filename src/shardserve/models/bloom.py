"""BLOOM: ALiBi attention, fused query_key_value, embedding layer norm, tanh-gelu MLP.

The fused query_key_value weight is laid out per head, [num_heads, 3, head_dim] rows, so a
contiguous block of rows is a contiguous block of whole heads: a plain column-parallel split
gives each rank the q, k and v of its own heads. Each rank then stores its rows as [3,
local_heads, head_dim] (BloomQKVLinear), so q, k and v are column blocks of the matmul's output,
views the attention kernels read in place: the per-head layout would need three copies a layer
(0.55 ms of BLOOM-176B TP4's 15.9 ms decode step on 4x H200, benchmarks/RESULTS.md).

Every residual add happens inside the norm that follows it (LayerNorm(x, residual), one fused
kernel), the residual travelling beside the hidden state from block to block, and so does the
all-reduce of the row-parallel output before it (dense, dense_4h_to_h; see models/llama.py).
"""

from __future__ import annotations

import torch
from torch import nn

from shardserve.layers.activation import input_act
from shardserve.layers.alibi import rank_alibi_slopes
from shardserve.layers.attention import Attention
from shardserve.layers.embedding import CausalLM, VocabParallelEmbedding
from shardserve.layers.linear import ColumnParallelLinear, RowParallelLinear, divide, store_rows
from shardserve.layers.norm import LayerNorm, add_norm
from shardserve.models.config import ModelConfig
from shardserve.weights.params import Loaded, narrow


class BloomQKVLinear(ColumnParallelLinear):
    """query_key_value split by heads; this rank's rows (weight and bias) reordered from the
    checkpoint's [local_heads, 3, head_dim] to [3, local_heads, head_dim]: output [q | k | v]."""

    def __init__(self, hidden: int, head_dim: int):
        super().__init__(hidden, 3 * hidden, bias=True)
        self.head_dim = head_dim

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id=None) -> None:
        offset, rows, start = self.shard_layout[shard_id]
        per_head = narrow(loaded, 0, start, rows)
        heads = rows // (3 * self.head_dim)
        by_part = per_head.reshape(heads, 3, self.head_dim, *per_head.shape[1:]).transpose(0, 1)
        store_rows(param, offset, by_part.reshape(per_head.shape))


class BloomAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden, self.head_dim = config.hidden_size, config.head_dim
        self.query_key_value = BloomQKVLinear(hidden, self.head_dim)
        self.dense = RowParallelLinear(hidden, hidden, bias=True, reduce_results=False)
        self.num_heads = config.num_heads
        self.tp_rank, self.tp_size = self.query_key_value.tp_rank, self.query_key_value.tp_size
        self.local_heads = divide(self.num_heads, self.tp_size, "num_attention_heads")
        # Slopes are a derived buffer, filled by init_buffers on the model's device.
        self.attn = Attention(
            self.local_heads, self.head_dim, self.head_dim**-0.5, alibi_slopes=torch.empty(self.local_heads)
        )

    def init_buffers(self, device) -> None:
        self.attn.alibi_slopes = rank_alibi_slopes(self.num_heads, self.tp_rank, self.tp_size, device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(hidden).chunk(3, dim=-1)  # [T, local_heads * head_dim] views
        return self.dense(self.attn(q, k, v))


class BloomMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True)
        self.dense_4h_to_h = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=True,
                                               reduce_results=False)
        self.act = input_act(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.dense_h_to_4h(x), input_act=self.act)  # gelu applied as it reads


class BloomBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config.norm_eps)
        self.self_attention = BloomAttention(config)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.norm_eps)
        self.mlp = BloomMLP(config)
        self.residual_post_ln = config.residual_post_layernorm

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, residual) -> (mlp output, residual it is still to be added to); the
        residual stream is all_reduce(hidden) + residual, and residual is None for the first
        block (hidden: the normalised embeddings, whole)."""
        x, residual = add_norm(self.input_layernorm, hidden, residual)
        if self.residual_post_ln:  # the residual branch starts at the norm's output
            residual = x
        x, residual = add_norm(self.post_attention_layernorm, self.self_attention(x), residual)
        if self.residual_post_ln:
            residual = x
        return self.mlp(x), residual


class BloomModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = LayerNorm(config.hidden_size, config.norm_eps)
        self.h = nn.ModuleList(BloomBlock(config) for _ in range(config.num_layers))
        self.ln_f = LayerNorm(config.hidden_size, config.norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # positions are unused: ALiBi biases attention by distance inside the Attention layer.
        hidden, residual = self.word_embeddings_layernorm(self.word_embeddings(input_ids)), None
        for block in self.h:
            hidden, residual = block(hidden, residual)
        return add_norm(self.ln_f, hidden, residual)[0]


class BloomForCausalLM(CausalLM):
    base_model_prefix = "transformer"

    def __init__(self, config: ModelConfig):
        transformer = BloomModel(config)
        super().__init__(config, transformer, transformer.word_embeddings)
