"""Llama, and its variants Mistral (sliding window ignored) and Qwen2 (q/k/v bias).

Pure math over a flat batch: `forward(input_ids [T], positions [T]) -> hidden [T, hidden]`,
`compute_logits(hidden [N, hidden]) -> float32 [N, vocab]`.

The residual stream travels beside the hidden state, vLLM-style: a layer returns its last
sublayer's output and the residual *before* that output is added, and the add happens inside the
next norm (RMSNorm(x, residual), one fused kernel instead of an add plus a norm). The final norm
takes the last layer's add. Same numbers as `hidden = hidden + sublayer(norm(hidden))`.

The row-parallel projections (o_proj, down_proj) return this rank's partial sums unreduced; the
norm after them reduces (add_norm: all-reduce, residual add and norm in one kernel on GPUs), so a
sublayer's output, and a layer's, is a partial sum wherever a residual travels beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from shardserve.layers.activation import input_act
from shardserve.layers.attention import Attention
from shardserve.layers.embedding import CausalLM, VocabParallelEmbedding
from shardserve.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from shardserve.layers.norm import RMSNorm, add_norm
from shardserve.layers.rotary import RotaryEmbedding
from shardserve.models.config import ModelConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding):
        super().__init__()
        c = config
        self.qkv_proj = QKVParallelLinear(c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.qkv_bias)
        self.o_proj = RowParallelLinear(c.num_heads * c.head_dim, c.hidden_size, c.o_bias, reduce_results=False)
        self.rotary_emb = rotary
        self.attn = Attention(self.qkv_proj.num_heads, c.head_dim, c.head_dim**-0.5, self.qkv_proj.num_kv_heads)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj.split(self.qkv_proj(hidden))  # this rank's heads
        # Rotary is applied inside the attention layer (on the triton backend, in the same
        # kernel as the KV-cache write); o_proj gives this rank's partial sum: [T, hidden].
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [inter, inter], config.mlp_bias)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, config.mlp_bias, reduce_results=False)
        self.act = input_act(config.hidden_act, gated=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [T, 2 * inter / tp] = [gate | up]; down_proj applies act(gate) * up as it reads it (one
        # kernel fewer per layer at decode: the activation is fused into its GEMM).
        return self.down_proj(self.gate_up_proj(x), input_act=self.act)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, residual) -> (mlp output, residual it is still to be added to); the
        residual stream is all_reduce(hidden) + residual, and residual is None for the first
        layer (hidden: the embeddings, whole)."""
        x, residual = add_norm(self.input_layernorm, hidden, residual)
        x, residual = add_norm(self.post_attention_layernorm, self.self_attn(positions, x), residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        # One cos/sin cache shared by every layer.
        rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, rotary) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None  # [T, hidden]
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return add_norm(self.norm, hidden, residual)[0]


class LlamaForCausalLM(CausalLM):
    base_model_prefix = "model"
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig):
        model = LlamaModel(config)
        super().__init__(config, model, model.embed_tokens)


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass
