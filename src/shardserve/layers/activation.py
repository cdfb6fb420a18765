"""Activation functions by HF name (`hidden_act`).

An MLP hands its activation to the second matmul as that layer's input activation
(`RowParallelLinear.forward(x, input_act=input_act(hidden_act, gated))`, kernels/act_and_mul.py),
which applies it as it reads its input: on GPUs at decode sizes inside the GEMM, so no
activation kernel runs between the two matmuls.
"""

from __future__ import annotations

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
