"""GPU kernels, one per file, each next to the pure-torch reference it is tested against.

Layers call a fused kernel only where `use_fused_kernels(x)` says so: the tensor is on a CUDA
device, Triton is installed, and the engine has not switched fused kernels off (the "torch"
attention backend runs the pure-torch references end to end; EngineConfig.extra
{"fused_kernels": False} turns off only the small fused kernels, to measure what they buy).
"""

from __future__ import annotations

import importlib.util

import torch

_enabled = True
_has_triton = importlib.util.find_spec("triton") is not None


def set_fused_kernels(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def use_fused_kernels(x: torch.Tensor) -> bool:
    return _enabled and _has_triton and x.is_cuda
