"""ModelConfig.from_hf: field mapping per family, rope formats, and errors that name the field."""

from __future__ import annotations

import json
import logging

import pytest

from helpers.checkpoints import BOS_ID, EOS_ID, PAD_ID, read_config
from shardserve.errors import ModelLoadError
from shardserve.models import ARCHITECTURES
from shardserve.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling


def test_registry_and_config_parsers_agree():
    assert set(ARCHITECTURES) == set(SUPPORTED_ARCHITECTURES)


def test_llama_fields(tiny_checkpoint):
    c = ModelConfig.from_hf(tiny_checkpoint("llama"))
    assert (c.architecture, c.vocab_size, c.hidden_size, c.num_layers) == ("LlamaForCausalLM", 512, 64, 2)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size) == (4, 2, 16, 128)
    assert (c.eos_token_id, c.bos_token_id, c.pad_token_id) == (EOS_ID, BOS_ID, PAD_ID)
    assert c.eos_token_ids == (EOS_ID,) and c.torch_dtype == "float32"
    assert c.rope_theta == 10000.0 and c.rope_scaling == RopeScaling(
        kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32,
    )
    assert not c.tie_word_embeddings and not c.qkv_bias and not c.o_bias


def test_old_style_rope_scaling_and_torch_dtype():
    """transformers 4 configs: top-level rope_theta, rope_scaling with "type", torch_dtype."""
    raw = {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
        "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0},
        "torch_dtype": "bfloat16", "eos_token_id": [7, 8],
    }
    c = ModelConfig.from_hf(raw)
    assert c.rope_theta == 500000.0 and c.rope_scaling == RopeScaling(kind="linear", factor=4.0)
    assert c.torch_dtype == "bfloat16" and c.eos_token_ids == (7, 8) and c.num_kv_heads == 4


def test_opt_bloom_qwen2_specifics(tiny_checkpoint):
    postln = ModelConfig.from_hf(tiny_checkpoint("opt-postln"))
    assert not postln.pre_layer_norm and not postln.final_layer_norm and postln.qkv_bias
    proj = ModelConfig.from_hf(tiny_checkpoint("opt-proj"))
    assert proj.word_embed_proj_dim == 32 and proj.final_layer_norm and proj.tie_word_embeddings
    bloom = ModelConfig.from_hf(tiny_checkpoint("bloom"))
    assert (bloom.num_heads, bloom.num_layers, bloom.intermediate_size) == (4, 2, 256)
    assert bloom.max_position_embeddings == 2048 and bloom.rope_theta is None
    qwen2 = ModelConfig.from_hf(tiny_checkpoint("qwen2"))
    assert qwen2.qkv_bias and not qwen2.o_bias and qwen2.rope_theta == 1000000.0


def test_remove_final_layer_norm_is_honoured(tiny_checkpoint):
    raw = read_config(tiny_checkpoint("opt")) | {"_remove_final_layer_norm": True}
    assert not ModelConfig.from_hf(raw).final_layer_norm


def test_sliding_window_is_logged(tiny_checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="shardserve.models.config"):
        ModelConfig.from_hf(tiny_checkpoint("mistral"))
    assert "sliding_window=4096 ignored" in caplog.text


def test_missing_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json not found"):
        ModelConfig.from_hf(tmp_path)


def test_corrupt_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    with pytest.raises(ModelLoadError, match=rf"{tmp_path}/config\.json: not a valid JSON"):
        ModelConfig.from_hf(tmp_path)


def test_unknown_architecture_points_to_accelerate(tiny_checkpoint):
    with pytest.raises(ModelLoadError) as err:
        ModelConfig.from_hf(tiny_checkpoint("gpt2"))
    assert "GPT2LMHeadModel" in str(err.value) and "engine=Accelerate" in str(err.value)
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_an_unknown_checkpoint_dtype_names_the_file_and_the_field(tiny_checkpoint, tmp_path, key):
    raw = read_config(tiny_checkpoint("llama"))
    raw.pop("dtype", None)
    raw[key] = "float12"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=rf"config\.json: field '{key}': dtype must be one of .*'float12'"):
        ModelConfig.from_hf(tmp_path)


@pytest.mark.parametrize("field", ["hidden_size", "architectures", "num_attention_heads"])
def test_missing_required_field(tiny_checkpoint, tmp_path, field):
    raw = read_config(tiny_checkpoint("llama"))
    del raw[field]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=rf"config\.json: missing.*'{field}'"):
        ModelConfig.from_hf(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": -64}, "'hidden_size' must be a positive integer"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "'yarn' is not supported"),
    ],
)
def test_invalid_fields(tiny_checkpoint, change, message):
    with pytest.raises(ModelLoadError, match=message):
        ModelConfig.from_hf(read_config(tiny_checkpoint("llama")) | change)
