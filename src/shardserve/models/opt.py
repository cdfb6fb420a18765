"""OPT: learned positions (offset 2), pre- or post-LN blocks, optional embedding projection.

Mirrors HF modeling_opt: with do_layer_norm_before=False (OPT-350m) the norms follow the
residual adds and the decoder has no final norm; when word_embed_proj_dim != hidden_size,
embeddings are projected in (project_in) and hidden states out (project_out) before the LM head,
so forward returns [T, word_embed_proj_dim].

Every residual add happens inside the norm that follows it (LayerNorm(x, residual), one fused
kernel), and so does the all-reduce of the row-parallel output before it (out_proj, fc2 return
partial sums; add_norm reduces them). Pre-LN layers pass the residual and their partial output on
to the next layer's first norm, vLLM-style (see models/llama.py); post-LN layers normalise the sum
at once, so they carry no residual and return whole hidden states.
"""

from __future__ import annotations

import torch
from torch import nn

from shardserve.layers.activation import input_act
from shardserve.layers.attention import Attention
from shardserve.layers.embedding import CausalLM, VocabParallelEmbedding
from shardserve.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from shardserve.layers.norm import LayerNorm, add_norm
from shardserve.models.config import ModelConfig
from shardserve.parallel.comm import all_reduce

# OPT's learned position table reserves its first two rows (a fairseq padding-offset artefact).
POSITION_OFFSET = 2


class OPTAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.qkv_proj = QKVParallelLinear(c.hidden_size, c.head_dim, c.num_heads, c.num_heads, c.qkv_bias)
        self.out_proj = RowParallelLinear(c.hidden_size, c.hidden_size, c.o_bias, reduce_results=False)
        self.attn = Attention(self.qkv_proj.num_heads, c.head_dim, c.head_dim**-0.5)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.attn(*self.qkv_proj.split(self.qkv_proj(hidden))))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_ln = config.pre_layer_norm
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = LayerNorm(config.hidden_size, config.norm_eps)
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size, config.mlp_bias)
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, config.mlp_bias,
                                     reduce_results=False)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.norm_eps)
        self.act = input_act(config.hidden_act)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x), input_act=self.act)  # fc2 applies the activation as it reads

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden, residual) -> (last sublayer's output, residual it is still to be added to);
        the residual stream is all_reduce(hidden) + residual (residual None: hidden is whole, in
        the first layer or post-LN)."""
        if self.pre_ln:
            x, residual = add_norm(self.self_attn_layer_norm, hidden, residual)
            x, residual = add_norm(self.final_layer_norm, self.self_attn(x), residual)
            return self._ffn(x), residual
        # Post-LN (OPT-350m): norm(hidden + sublayer(hidden)); the sum is not needed afterwards.
        hidden = add_norm(self.self_attn_layer_norm, self.self_attn(hidden), hidden)[0]
        return add_norm(self.final_layer_norm, self._ffn(hidden), hidden)[0], None


class OPTDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden, proj = config.hidden_size, config.word_embed_proj_dim
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, proj)
        self.embed_positions = VocabParallelEmbedding(
            config.max_position_embeddings + POSITION_OFFSET, hidden, replicated=True
        )
        self.project_in = ReplicatedLinear(proj, hidden, bias=False) if proj != hidden else None
        self.project_out = ReplicatedLinear(hidden, proj, bias=False) if proj != hidden else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config) for _ in range(config.num_layers))
        self.final_layer_norm = LayerNorm(hidden, config.norm_eps) if config.final_layer_norm else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, word_embed_proj_dim]
        if self.project_in is not None:
            x = self.project_in(x)  # [T, hidden]
        hidden, residual = x + self.embed_positions(positions + POSITION_OFFSET), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        if self.final_layer_norm is not None:
            hidden = add_norm(self.final_layer_norm, hidden, residual)[0]
        elif residual is not None:  # pre-LN without a final norm (_remove_final_layer_norm)
            hidden = all_reduce(hidden) + residual  # the last layer's output is a partial sum
        return self.project_out(hidden) if self.project_out is not None else hidden


class OPTModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids, positions)


class OPTForCausalLM(CausalLM):
    base_model_prefix = "model"
    packed_modules = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}

    def __init__(self, config: ModelConfig):
        model = OPTModel(config)
        super().__init__(config, model, model.decoder.embed_tokens)
