"""Bandwidth utilisation counts the bytes a decode step reads: 8-bit weights read half the bytes
of 16-bit ones (plus a float32 scale per output row), an untied LM head included; lookup-only
embeddings are not read."""

from __future__ import annotations

import pytest
import torch

from shardserve.bench.latency import decode_bytes
from shardserve.models import create_model
from shardserve.models.config import ModelConfig


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
def test_8bit_weights_count_one_byte_and_their_scales(tiny_checkpoint, quantization):
    config = ModelConfig.from_hf(tiny_checkpoint("llama"))
    half = decode_bytes(config, torch.bfloat16, batch=1, mean_context=0)
    eight = decode_bytes(config, torch.bfloat16, batch=1, mean_context=0, quantization=quantization)
    model = create_model(config, torch.bfloat16, quantization)
    scales = [p for name, p in model.named_parameters() if name.endswith("weight_scale")]
    quantized = [p for p in model.parameters() if p.dtype in (torch.int8, torch.float8_e4m3fn)]
    assert scales and len(scales) == len(quantized)
    assert not config.tie_word_embeddings and model.lm_head.weight.dtype in (torch.int8, torch.float8_e4m3fn)
    saved = sum(p.numel() for p in quantized) - sum(4 * s.numel() for s in scales)  # 2 -> 1 byte, + scales
    assert half - eight == saved


def test_kv_cache_and_head_are_counted_and_the_lookup_table_is_not(tiny_checkpoint):
    config = ModelConfig.from_hf(tiny_checkpoint("llama"))  # untied: embedding and head apart
    model = create_model(config, torch.float16)
    everything = sum(p.numel() * 2 for p in model.parameters())
    lookup = model.model.embed_tokens.weight.numel() * 2
    assert not config.tie_word_embeddings
    assert decode_bytes(config, torch.float16, batch=1, mean_context=0) == everything - lookup
    kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 2
    assert decode_bytes(config, torch.float16, 3, 10) - decode_bytes(config, torch.float16, 1, 0) == 3 * 10 * kv_per_token
