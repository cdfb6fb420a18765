"""Activation functions by HF name (`hidden_act`).

An MLP hands its activation to the second matmul as that layer's input activation
(`RowParallelLinear.forward(x, input_act=input_act(hidden_act, gated))`, kernels/act_and_mul.py),
which applies it as it reads its input: on GPUs at decode sizes inside the GEMM, so no
activation kernel runs between the two matmuls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from shardserve.kernels.act_and_mul import apply_input_act

# HF hidden_act -> the activation's name in kernels/act_and_mul.py.
_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    # tanh approximation; BLOOM's own gelu is this formula (0.79788456 = sqrt(2/pi)).
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}


def input_act(hidden_act: str, gated: bool = False) -> str:
    """The input activation that applies `hidden_act`; gated: to [gate | up] rows, act(gate) * up."""
    if hidden_act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {hidden_act!r}")
    return _ACTIVATIONS[hidden_act] + ("_and_mul" if gated else "")


def act_and_mul(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * inter] = [gate | up] -> act(gate) * up [T, inter] as a step of its own (one kernel
    for SiLU on GPUs): what Llama MLPs ran before the down projection took the activation over."""
    if act is F.silu:
        return apply_input_act(x, "silu_and_mul")
    gate, up = x.chunk(2, dim=-1)
    return act(gate) * up
