"""Fused residual add + RMSNorm / LayerNorm: the Triton kernels in Triton's interpreter, the
layers' residual argument, and the models' fused structure.

bfloat16 is left to tests/gpu: the interpreter's float32 -> bfloat16 cast does not round to
nearest even as the GPU does, so its sums differ from torch's by an ulp.
"""

from __future__ import annotations

import pytest
import torch

from helpers.fused_norm_cases import FUSED_ADD_NORM_CHECKS
from helpers.markers import needs_interpreter
from shardserve.layers.norm import LayerNorm, RMSNorm

interpreter = needs_interpreter


@interpreter
@pytest.mark.parametrize("rows,dim", [(1, 1000), (7, 1000), (5, 33), (3, 4097)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(FUSED_ADD_NORM_CHECKS))
def test_fused_add_norm_kernels_in_interpreter(name, dtype, rows, dim):
    pytest.importorskip("triton")
    torch.manual_seed(rows * dim)
    FUSED_ADD_NORM_CHECKS[name]("cpu", dtype, 1e-6 if dtype == torch.float32 else 2e-3, rows=rows, dim=dim)


@interpreter
def test_fused_add_norm_kernels_no_rows():
    pytest.importorskip("triton")
    from shardserve.kernels.layer_norm import fused_add_layer_norm
    from shardserve.kernels.rms_norm import fused_add_rms_norm

    x, w = torch.empty(0, 64), torch.ones(64)
    for out, res in (fused_add_rms_norm(x, x, w, 1e-5), fused_add_layer_norm(x, x, w, w, 1e-5)):
        assert out.shape == res.shape == (0, 64)


def _norms(dtype):
    torch.manual_seed(0)
    rms, ln = RMSNorm(96, 1e-6), LayerNorm(96, 1e-5)
    for norm in (rms, ln):
        for p in norm.parameters():
            p.data = (1 + 0.3 * torch.randn(96)).to(dtype)
    return rms, ln


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_residual_torch_path_is_add_then_norm(dtype):
    """The torch path (CPU, or fused kernels off) is exactly `s = x + residual; norm(s)`."""
    x, residual = torch.randn(6, 96).to(dtype), (torch.randn(6, 96) * 10).to(dtype)
    for norm in _norms(dtype):
        out, res = norm(x, residual)
        assert torch.equal(res, x + residual) and torch.equal(out, norm(x + residual))


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_layer_residual_fused_matches_unfused(monkeypatch, dtype):
    """With the kernels on, norm(x, residual) is the unfused norm kernel on x + residual, bit for bit."""
    pytest.importorskip("triton")
    import shardserve.layers.norm as norm_module

    monkeypatch.setattr(norm_module, "use_fused_kernels", lambda x: True)  # CPU tensors through Triton
    x, residual = torch.randn(6, 96).to(dtype), (torch.randn(6, 96) * 10).to(dtype)
    for norm in _norms(dtype):
        out, res = norm(x, residual)
        assert torch.equal(res, x + residual) and torch.equal(out, norm(x + residual))
        ref = norm._norm(x + residual)  # the torch path
        tol = 1e-6 if dtype == torch.float32 else 2e-3
        assert (out.double() - ref.double()).norm() <= tol * ref.double().norm()
