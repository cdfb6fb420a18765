"""Normalisation layers (replicated on every rank). Norm weights random-init to 1, biases to 0.

Both take an optional residual: `norm(x, residual)` returns (norm(x + residual), x + residual),
the residual add of a pre-norm decoder folded into the norm that follows it (one fused kernel
instead of an add kernel plus a norm kernel). The sum is in the input dtype either way.
`add_norm` goes one step further for tensor parallelism: it also takes the all-reduce of the
row-parallel output before the add (parallel.comm.all_reduce_add_norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shardserve.kernels import use_fused_kernels
from shardserve.parallel.comm import all_reduce_add_norm
from shardserve.weights.params import replicated_param


def _norm_param(dim: int, fill: float) -> nn.Parameter:
    param = replicated_param((dim,))
    param.random_fill = fill  # weights.random_init: a constant, not noise
    return param


class _ResidualNorm(nn.Module):
    """forward(x, residual) of both norms: a Triton kernel (`_kernel`) on GPU 2-D inputs with fused
    kernels on, else the residual add and then the torch norm (`_norm`)."""

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether forward(x, ...) runs the Triton kernel (all_reduce_add_norm fuses only then:
        its kernel gives that kernel's bits, not the torch path's)."""
        return use_fused_kernels(x) and x.dim() == 2

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x [T, dim] -> [T, dim]; with residual [T, dim] -> (norm(x + residual), x + residual)."""
        if self.uses_kernel(x):
            return self._kernel(x, residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x


class RMSNorm(_ResidualNorm):
    """Llama's RMSNorm: statistics in float32, scaled by the weight in the input dtype (as HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)

    def _kernel(self, x: torch.Tensor, residual: torch.Tensor | None):
        from shardserve.kernels.rms_norm import fused_add_rms_norm, rms_norm

        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LayerNorm(_ResidualNorm):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = _norm_param(dim, 1.0)
        self.bias = _norm_param(dim, 0.0)

    def _kernel(self, x: torch.Tensor, residual: torch.Tensor | None):
        from shardserve.kernels.layer_norm import fused_add_layer_norm, layer_norm

        if residual is None:
            return layer_norm(x, self.weight, self.bias, self.eps)
        return fused_add_layer_norm(x, residual, self.weight, self.bias, self.eps)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def add_norm(norm: RMSNorm | LayerNorm, x: torch.Tensor, residual: torch.Tensor | None):
    """A decoder's norm on its residual stream, and the stream. With a residual, x [T, dim] is this
    rank's share of a row-parallel output (RowParallelLinear(reduce_results=False)): -> (norm(s),
    s) with s = all_reduce(x) + residual, the reduce fused into the norm's kernel where the fast
    all-reduce allows. Without one (the first layer), x is the stream itself, whole on every
    rank: -> (norm(x), x)."""
    return (norm(x), x) if residual is None else all_reduce_add_norm(x, residual, norm)
