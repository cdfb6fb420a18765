"""Rotary, ALiBi, norms and activations against the transformers implementations."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from shardserve.kernels.act_and_mul import input_act_reference
from shardserve.layers.activation import input_act
from shardserve.layers.alibi import alibi_slopes, rank_alibi_slopes
from shardserve.layers.norm import RMSNorm
from shardserve.layers.rotary import RotaryEmbedding, inverse_frequencies
from shardserve.models.config import ModelConfig

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 500000.0,
    },
}


def _hf_config(rope: dict) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters=rope,
    )


@pytest.mark.parametrize("kind", ROPES)
def test_inverse_frequencies_match_transformers(kind):
    hf = _hf_config(ROPES[kind])
    ours = ModelConfig.from_hf({**hf.to_dict(), "architectures": ["LlamaForCausalLM"], "intermediate_size": 8})
    if kind == "default":
        expected = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)[0]
    else:
        expected = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")[0]
    got = inverse_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling)
    assert torch.allclose(got, expected, rtol=1e-6, atol=0)
    if kind != "default":  # the scaling really changes something
        assert not torch.allclose(got, inverse_frequencies(ours.head_dim, ours.rope_theta, None))


def test_rotary_matches_hf_apply_rotary_pos_emb():
    hf = _hf_config(ROPES["llama3"])
    ours = ModelConfig.from_hf({**hf.to_dict(), "architectures": ["LlamaForCausalLM"], "intermediate_size": 8})
    rope = RotaryEmbedding(ours.head_dim, 512, ours.rope_theta, ours.rope_scaling)
    positions = torch.tensor([0, 1, 7, 300, 511, 64])
    q, k = torch.randn(6, 4 * 64), torch.randn(6, 2 * 64)
    got_q, got_k = rope(positions, q, k)
    cos, sin = LlamaRotaryEmbedding(hf)(q, positions[None])
    # HF layout: [batch, heads, seq, head_dim]
    want_q, want_k = apply_rotary_pos_emb(
        q.view(1, 6, 4, 64).transpose(1, 2), k.view(1, 6, 2, 64).transpose(1, 2), cos, sin
    )
    assert torch.allclose(got_q, want_q.transpose(1, 2).reshape(6, -1), atol=1e-5)
    assert torch.allclose(got_k, want_k.transpose(1, 2).reshape(6, -1), atol=1e-5)


@pytest.mark.parametrize("num_heads", [4, 6, 12, 16, 112])
def test_alibi_slopes_match_bloom(num_heads):
    expected = _get_alibi_slopes(num_heads, "cpu")
    assert torch.equal(alibi_slopes(num_heads), expected)
    ranks = [rank_alibi_slopes(num_heads, r, 2, "cpu") for r in range(2)]
    assert torch.equal(torch.cat(ranks), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_llama(dtype):
    x = torch.randn(5, 32).to(dtype)
    weight = (1 + 0.1 * torch.randn(32)).to(dtype)
    hf = LlamaRMSNorm(32, eps=1e-5).to(dtype)
    hf.weight.data.copy_(weight)
    ours = RMSNorm(32, 1e-5).to(dtype)
    ours.weight.data.copy_(weight)
    assert torch.equal(ours(x), hf(x))


def test_activation_names():
    x = torch.linspace(-3, 3, 13)
    assert input_act("relu") == "relu" and input_act("silu", gated=True) == "silu_and_mul"
    assert torch.equal(input_act_reference(x, input_act("relu")), torch.relu(x))
    bloom_gelu = x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    assert torch.allclose(input_act_reference(x, input_act("gelu_pytorch_tanh")), bloom_gelu, atol=1e-6)
    gate_up = torch.cat([x, x + 1])
    assert torch.equal(input_act_reference(gate_up, input_act("swish", gated=True)), torch.nn.functional.silu(x) * (x + 1))
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        input_act("swiglu-ish")
