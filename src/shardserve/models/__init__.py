"""Model registry and construction: HF architecture name -> model class, built and loaded.

Model modules are imported on first use, so reading a ModelConfig does not import them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from shardserve.errors import ModelLoadError
from shardserve.models.config import ACCELERATE_HINT, ModelConfig
from shardserve.weights.fast_read import LoadStats

# HF architecture name -> module defining a class of that name.
ARCHITECTURES = {
    "OPTForCausalLM": "shardserve.models.opt",
    "BloomForCausalLM": "shardserve.models.bloom",
    "LlamaForCausalLM": "shardserve.models.llama",
    "MistralForCausalLM": "shardserve.models.llama",
    "Qwen2ForCausalLM": "shardserve.models.llama",
}


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in ARCHITECTURES:
        raise ModelLoadError(
            f"architecture {architecture!r} is not supported by the tensor-parallel engine; {ACCELERATE_HINT}"
        )
    return getattr(importlib.import_module(ARCHITECTURES[architecture]), architecture)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def create_model(config: ModelConfig, dtype: torch.dtype = torch.float32, quantization: str | None = None) -> nn.Module:
    """The model on the meta device (no memory): shapes for this TP rank, parameters of `dtype`
    (linear weights 8-bit with `quantization` "int8" | "fp8", see layers/quant.py)."""
    from shardserve.layers.quant import linear_quantization

    with torch.device("meta"), _default_dtype(dtype), linear_quantization(quantization):
        return get_model_class(config.architecture)(config)


def load_model(
    model_config: ModelConfig,
    model_dir: str | Path | None,
    dtype: torch.dtype,
    device: torch.device | str,
    load_format: str = "auto",
    seed: int = 0,
    quantization: str | None = None,
    stats: LoadStats | None = None,
) -> nn.Module:
    """Build on meta, materialise on `device`, fill from the checkpoint (this rank's slices).

    load_format: "auto" | "safetensors" | "pt" read `model_dir` ("auto" also recognises a
    pre-sharded directory written by `shardserve partition`); "random" initialises random
    weights on the device (deterministic per `seed`, consistent across TP ranks).
    quantization: None | "int8" | "fp8" weight-only, quantised while loading; a pre-sharded
    8-bit checkpoint brings its own (asking for another one is a ValueError).
    stats: filled with the load's phases and bytes (weights/fast_read.LoadStats).
    """
    from shardserve.parallel import get_tp_rank, get_tp_size
    from shardserve.weights.loader import load_weights, materialize
    from shardserve.weights.presharded import (
        load_presharded,
        presharded_quantization,
        reads_presharded,
    )
    from shardserve.weights.random_init import init_random_weights

    stats = stats if stats is not None else LoadStats()
    started = time.perf_counter()
    presharded = reads_presharded(load_format, model_dir)
    if presharded:
        quantization = presharded_quantization(model_dir, quantization)
    model = create_model(model_config, dtype, quantization)
    materialize(model, device)
    stats.build_s = time.perf_counter() - started
    if load_format == "random":
        init_random_weights(model, seed)
    elif presharded:
        load_presharded(model, model_dir, get_tp_rank(), get_tp_size(), stats=stats)
    else:
        if model_dir is None:
            raise ValueError("model_dir is required unless load_format='random'")
        load_weights(model, model_dir, load_format)
    stats.total_s = time.perf_counter() - started
    return model.eval()
