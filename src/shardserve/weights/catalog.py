"""Public model configs by short name, as their config.json files read on the model hub.

`shardserve bench --model opt-30b --random-weights` builds the real architecture from these
(no download: nothing but the config is needed when weights are random). Only the keys that
shape the network and the token ids are kept; everything else takes the transformers default.
"""

from __future__ import annotations

import json
from pathlib import Path

_OPT_COMMON = dict(
    architectures=["OPTForCausalLM"], model_type="opt", vocab_size=50272, max_position_embeddings=2048,
    activation_function="relu", do_layer_norm_before=True, enable_bias=True,
    layer_norm_elementwise_affine=True, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    dropout=0.0, attention_dropout=0.0, torch_dtype="float16",
)


def _opt(hidden: int, layers: int, heads: int, **extra) -> dict:
    return dict(_OPT_COMMON, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                ffn_dim=4 * hidden, word_embed_proj_dim=hidden) | extra


_BLOOM_COMMON = dict(
    architectures=["BloomForCausalLM"], model_type="bloom", vocab_size=250880, layer_norm_epsilon=1e-5,
    apply_residual_connection_post_layernorm=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    torch_dtype="float16",
)


def _bloom(hidden: int, layers: int, heads: int, **extra) -> dict:
    return dict(_BLOOM_COMMON, n_embed=hidden, n_layer=layers, n_head=heads) | extra


_LLAMA3 = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, max_position_embeddings=8192,
    rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu", num_key_value_heads=8,
    tie_word_embeddings=False, attention_bias=False, bos_token_id=128000, eos_token_id=128001,
    torch_dtype="bfloat16",
)

CATALOG: dict[str, dict] = {
    "opt-125m": _opt(768, 12, 12),
    "opt-350m": _opt(1024, 24, 16, word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": _opt(2048, 24, 32),
    "opt-2.7b": _opt(2560, 32, 32),
    "opt-6.7b": _opt(4096, 32, 32),
    "opt-13b": _opt(5120, 40, 40),
    "opt-30b": _opt(7168, 48, 56),
    "opt-66b": _opt(9216, 64, 72),
    "bloom-560m": _bloom(1024, 24, 16),
    "bloom-1b1": _bloom(1536, 24, 16),
    "bloom-1b7": _bloom(2048, 24, 16),
    "bloom-3b": _bloom(2560, 30, 32),
    "bloom-7b1": _bloom(4096, 30, 32),
    "bloom": _bloom(14336, 70, 112, torch_dtype="bfloat16"),  # BLOOM-176B
    "llama-3-8b": dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32),
    "llama-3-70b": dict(_LLAMA3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64),
    "mistral-7b": dict(
        architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=32768, sliding_window=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16",
    ),
    "qwen2-7b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=3584,
        intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
        sliding_window=131072, use_sliding_window=False, max_window_layers=28, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151643, torch_dtype="bfloat16",
    ),
}
ALIASES = {"bloom-176b": "bloom", "meta-llama-3-8b": "llama-3-8b", "meta-llama-3-70b": "llama-3-70b"}


def catalog_config(name: str) -> dict:
    """A copy of the named config (case-insensitive; 'facebook/opt-30b' works too)."""
    key = name.lower().rsplit("/", 1)[-1]
    key = ALIASES.get(key, key)
    if key not in CATALOG:
        raise ValueError(f"model {name!r} is neither a directory nor in the catalog: {sorted(CATALOG)}")
    return json.loads(json.dumps(CATALOG[key]))


def write_config_dir(name: str, directory: Path, **overrides) -> Path:
    """`directory`/config.json for a catalog model (the weights are then made randomly)."""
    config = catalog_config(name) | overrides
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
