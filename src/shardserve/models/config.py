"""ModelConfig: the one place that knows Hugging Face config.json key names.

`ModelConfig.from_hf(dir | config.json path | dict)` reads an HF config once, validates it and
returns a frozen dataclass in our own vocabulary; models and the engine read only that. One
parser per config family (OPT, BLOOM, Llama-like), chosen by the `architectures` entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardserve.config import canonical_dtype
from shardserve.errors import ModelLoadError
from shardserve.json_files import read_json_object

logger = logging.getLogger(__name__)

ACCELERATE_HINT = "the Accelerate engine (engine=Accelerate) serves it"


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling. kind: "linear" (positions / factor) or "llama3" (per band)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # HF architecture name, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    hidden_act: str
    norm_eps: float
    tie_word_embeddings: bool
    eos_token_id: int | tuple[int, ...] | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None  # the checkpoint's dtype name, e.g. "bfloat16"
    # Biases: q/k/v projections, attention output projection, MLP projections.
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # Rotary (Llama family); None for learned positions (OPT) and ALiBi (BLOOM).
    rope_theta: float | None = None
    rope_scaling: RopeScaling | None = None
    # OPT: pre-LN (True) or post-LN blocks, embedding projection width, decoder's final norm.
    pre_layer_norm: bool = True
    word_embed_proj_dim: int | None = None
    final_layer_norm: bool = True
    # BLOOM: the residual branch starts after the layer norm instead of before it.
    residual_post_layernorm: bool = False

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @classmethod
    def from_hf(cls, source: str | Path | dict) -> ModelConfig:
        """source: a model directory, a config.json path, or an already-parsed dict."""
        where, raw = _read_config(source)
        archs = raw.get("architectures") or []
        if not isinstance(archs, list) or not archs:
            raise ModelLoadError(f"{where}: missing field 'architectures' (e.g. ['LlamaForCausalLM'])")
        arch = archs[0]
        if arch not in _PARSERS:
            raise ModelLoadError(
                f"{where}: architecture {arch!r} is not supported by the tensor-parallel engine "
                f"(supported: {', '.join(sorted(_PARSERS))}); {ACCELERATE_HINT}"
            )
        f = _Fields(raw, where)
        config = cls(architecture=arch, **_common_fields(f), **_PARSERS[arch](f))
        _validate(config, where)
        return config


class _Fields:
    """Typed access to a raw config dict; errors name the file and the field."""

    def __init__(self, raw: dict, where: str):
        self.raw, self.where = raw, where

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def req(self, *keys: str) -> Any:
        """The first of `keys` present (aliases, e.g. "n_head" / "num_attention_heads")."""
        for key in keys:
            if self.raw.get(key) is not None:
                return self.raw[key]
        raise ModelLoadError(f"{self.where}: missing required field {keys[0]!r}")

    def head_dim(self, hidden: int, heads: int) -> int:
        if hidden % heads:
            raise ModelLoadError(f"{self.where}: hidden_size {hidden} is not a multiple of the {heads} heads")
        return hidden // heads

    def int(self, *keys: str, default: int | None = None) -> int:
        value = self.req(*keys) if default is None else self.get(keys[0], default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelLoadError(f"{self.where}: field {keys[0]!r} must be a positive integer, got {value!r}")
        return value


def _read_config(source: str | Path | dict) -> tuple[str, dict]:
    if isinstance(source, dict):
        return "config", source
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path}: config.json not found (is this a Hugging Face model directory?)")
    return str(path), read_json_object(path)


def _common_fields(f: _Fields) -> dict:
    eos = f.get("eos_token_id")
    return dict(
        vocab_size=f.int("vocab_size"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        bos_token_id=f.get("bos_token_id"),
        pad_token_id=f.get("pad_token_id"),
        torch_dtype=_checkpoint_dtype(f),
    )


def _checkpoint_dtype(f: _Fields) -> str | None:
    """transformers 5 writes "dtype"; older versions "torch_dtype". Checked here, naming the file,
    before anything else (transformers' own readers included) trips over it."""
    key = "dtype" if f.raw.get("dtype") is not None else "torch_dtype"
    name = f.get(key)
    if name is not None:
        try:
            canonical_dtype(name)
        except ValueError as e:
            raise ModelLoadError(f"{f.where}: field {key!r}: {e}") from None
    return name


def _opt(f: _Fields) -> dict:
    hidden = f.int("hidden_size")
    heads = f.int("num_attention_heads")
    if f.get("layer_norm_elementwise_affine", True) is not True:
        raise ModelLoadError(f"{f.where}: field 'layer_norm_elementwise_affine' = false is not supported")
    pre_ln = bool(f.get("do_layer_norm_before", True))
    bias = bool(f.get("enable_bias", True))
    return dict(
        hidden_size=hidden, num_layers=f.int("num_hidden_layers"), num_heads=heads, num_kv_heads=heads,
        head_dim=f.head_dim(hidden, heads), intermediate_size=f.int("ffn_dim"),
        max_position_embeddings=f.int("max_position_embeddings"),
        hidden_act=f.get("activation_function", "relu"), norm_eps=1e-5,  # nn.LayerNorm default
        tie_word_embeddings=bool(f.get("tie_word_embeddings", True)),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias,
        pre_layer_norm=pre_ln,
        word_embed_proj_dim=f.int("word_embed_proj_dim", default=hidden),
        # HF keeps the decoder's final norm only for pre-LN models (and not for old checkpoints
        # that set _remove_final_layer_norm).
        final_layer_norm=pre_ln and not f.get("_remove_final_layer_norm", False),
    )


def _bloom(f: _Fields) -> dict:
    hidden = f.int("hidden_size", "n_embed")
    heads = f.int("n_head", "num_attention_heads")
    return dict(
        hidden_size=hidden, num_layers=f.int("n_layer", "num_hidden_layers"), num_heads=heads,
        num_kv_heads=heads, head_dim=f.head_dim(hidden, heads), intermediate_size=4 * hidden,
        # ALiBi has no position table; seq_length is the trained context when present.
        max_position_embeddings=f.int("seq_length", default=2048),
        hidden_act="gelu_pytorch_tanh",  # BLOOM's own gelu is the tanh approximation
        norm_eps=float(f.get("layer_norm_epsilon", 1e-5)),
        tie_word_embeddings=bool(f.get("tie_word_embeddings", True)),
        qkv_bias=True, o_bias=True, mlp_bias=True,
        residual_post_layernorm=bool(f.get("apply_residual_connection_post_layernorm", False)),
    )


def _llama_like(qwen2: bool):
    """Llama, Mistral, Qwen2: same block; Qwen2 always has q/k/v bias and no o_proj bias."""

    def parse(f: _Fields) -> dict:
        hidden = f.int("hidden_size")
        heads = f.int("num_attention_heads")
        attention_bias = bool(f.get("attention_bias", False))
        if f.get("sliding_window") is not None and f.get("use_sliding_window", True):
            logger.info(
                "%s: sliding_window=%s ignored; full attention is used (identical up to that length)",
                f.where, f.get("sliding_window"),
            )
        rope_theta, rope_scaling = _rope(f)
        return dict(
            hidden_size=hidden, num_layers=f.int("num_hidden_layers"), num_heads=heads,
            num_kv_heads=f.int("num_key_value_heads", default=heads),
            # An explicit head_dim may differ from hidden_size / heads (e.g. Mistral-Nemo).
            head_dim=f.int("head_dim") if f.get("head_dim") is not None else f.head_dim(hidden, heads),
            intermediate_size=f.int("intermediate_size"),
            max_position_embeddings=f.int("max_position_embeddings", default=2048),
            hidden_act=f.get("hidden_act", "silu"), norm_eps=float(f.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(f.get("tie_word_embeddings", False)),
            qkv_bias=qwen2 or attention_bias,
            o_bias=attention_bias and not qwen2,
            mlp_bias=bool(f.get("mlp_bias", False)),
            rope_theta=rope_theta, rope_scaling=rope_scaling,
        )

    return parse


def _rope(f: _Fields) -> tuple[float, RopeScaling | None]:
    # transformers 5 folds rope_theta and the scaling into "rope_parameters"; older configs have
    # top-level "rope_theta" and an optional "rope_scaling" dict using "type" or "rope_type".
    params = f.get("rope_parameters") or f.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ModelLoadError(f"{f.where}: field 'rope_scaling' must be an object, got {params!r}")
    theta = float(params.get("rope_theta", f.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise ModelLoadError(
            f"{f.where}: field 'rope_scaling' type {kind!r} is not supported (default, linear, llama3)"
        )
    if "factor" not in params:
        raise ModelLoadError(f"{f.where}: field 'rope_scaling.factor' is missing")
    scaling = RopeScaling(kind=kind, factor=float(params["factor"]))
    if kind == "llama3":
        scaling = RopeScaling(
            kind=kind,
            factor=float(params["factor"]),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", f.get("max_position_embeddings", 8192))
            ),
        )
    return theta, scaling


def _validate(c: ModelConfig, where: str) -> None:
    if c.num_heads % c.num_kv_heads:
        raise ModelLoadError(
            f"{where}: num_attention_heads {c.num_heads} is not a multiple of "
            f"num_key_value_heads {c.num_kv_heads}"
        )


_PARSERS = {
    "OPTForCausalLM": _opt,
    "BloomForCausalLM": _bloom,
    "LlamaForCausalLM": _llama_like(qwen2=False),
    "MistralForCausalLM": _llama_like(qwen2=False),
    "Qwen2ForCausalLM": _llama_like(qwen2=True),
}
SUPPORTED_ARCHITECTURES = tuple(sorted(_PARSERS))
