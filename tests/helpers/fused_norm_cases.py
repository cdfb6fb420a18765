"""Fused residual add + RMSNorm / LayerNorm kernels against the layers' torch path and against
the unfused kernels. Shared by the interpreter tests (CPU) and tests/gpu.

The claim checked: the fused kernel's new residual is exactly torch's `x + residual` in the
input dtype, and its normalised output is exactly the unfused kernel's on that sum, so fusing
changes no number of the GPU path; the torch path (the reference) agrees within `tol`.
"""

from __future__ import annotations

import torch

from helpers.fused_cases import _reference, _rel


def _inputs(rows: int, dim: int, device, dtype):
    # Strided rows (slices of wider tensors); mean != 0 so LayerNorm's centring matters.
    x = (torch.randn(rows, dim + 24, device=device) * 3 + 1).to(dtype)[:, 8 : 8 + dim]
    residual = (torch.randn(rows, dim + 40, device=device) * 10).to(dtype)[:, 20 : 20 + dim]
    return x, residual


def check_fused_add_rms_norm(device, dtype, tol: float, rows: int = 7, dim: int = 1000) -> float:
    from shardserve.kernels.rms_norm import fused_add_rms_norm, rms_norm
    from shardserve.layers.norm import RMSNorm

    norm = RMSNorm(dim, 1e-5)
    norm.weight = torch.nn.Parameter(torch.randn(dim, dtype=dtype, device=device), requires_grad=False)
    x, residual = _inputs(rows, dim, device, dtype)
    x_before, residual_before = x.clone(), residual.clone()
    ref_out, ref_res = _reference(lambda: norm(x, residual))
    out, res = fused_add_rms_norm(x, residual, norm.weight, norm.eps)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before), "an input was written"
    assert torch.equal(res, ref_res), "the new residual is not x + residual in the input dtype"
    assert torch.equal(out, rms_norm(ref_res, norm.weight, norm.eps)), "fused != unfused kernel"
    return _rel(out, ref_out, tol)


def check_fused_add_layer_norm(device, dtype, tol: float, rows: int = 7, dim: int = 1000) -> float:
    from shardserve.kernels.layer_norm import fused_add_layer_norm, layer_norm
    from shardserve.layers.norm import LayerNorm

    norm = LayerNorm(dim, 1e-5)
    for name in ("weight", "bias"):
        setattr(norm, name, torch.nn.Parameter(torch.randn(dim, dtype=dtype, device=device), requires_grad=False))
    x, residual = _inputs(rows, dim, device, dtype)
    x_before, residual_before = x.clone(), residual.clone()
    ref_out, ref_res = _reference(lambda: norm(x, residual))
    out, res = fused_add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before), "an input was written"
    assert torch.equal(res, ref_res), "the new residual is not x + residual in the input dtype"
    assert torch.equal(out, layer_norm(ref_res, norm.weight, norm.bias, norm.eps)), "fused != unfused kernel"
    return _rel(out, ref_out, tol)


FUSED_ADD_NORM_CHECKS = {
    "fused_add_rms_norm": check_fused_add_rms_norm,
    "fused_add_layer_norm": check_fused_add_layer_norm,
}
