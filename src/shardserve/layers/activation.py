"""Activation functions by HF name, and the gated SiLU of Llama MLPs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from shardserve.kernels import use_fused_kernels

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    # tanh approximation; BLOOM's own gelu is this formula (0.79788456 = sqrt(2/pi)).
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


def act_and_mul(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * inter] = [gate | up] -> act(gate) * up [T, inter] (one kernel for SiLU on GPUs)."""
    if act is F.silu and use_fused_kernels(x):
        from shardserve.kernels.act_and_mul import silu_and_mul

        return silu_and_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return act(gate) * up
