"""Normalisation layers (replicated on every rank). Norm weights random-init to 1, biases to 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shardserve.kernels import use_fused_kernels
from shardserve.weights.params import replicated_param


def _norm_param(dim: int, fill: float) -> nn.Parameter:
    param = replicated_param((dim,))
    param.random_fill = fill  # weights.random_init: a constant, not noise
    return param


class RMSNorm(nn.Module):
    """Llama's RMSNorm: statistics in float32, scaled by the weight in the input dtype (as HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, dim] -> [T, dim]."""
        if use_fused_kernels(x):
            from shardserve.kernels.rms_norm import rms_norm

            return rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)
        self.bias = _norm_param(dim, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, dim] -> [T, dim]."""
        if use_fused_kernels(x) and x.dim() == 2:
            from shardserve.kernels.layer_norm import layer_norm

            return layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
