"""Shared by the tuned-linear GPU tests (tests/gpu/test_quant_kernels.py, test_dense_kernels.py,
test_act_gemm_kernels.py): weight-format parameters and GPU markers, a CUDA-graph replay check,
a spy on the layers' tuned_linear calls, and building layers in bf16 on the GPU."""

from __future__ import annotations

import pytest
import torch

from helpers.quant_cases import TOL, relative_error
from shardserve import kernels
from shardserve.kernels.gemm_kernels import device_facts
from shardserve.kernels.tuned_gemm import tuned_linear
from shardserve.layers import quant


def capability() -> tuple[int, int]:
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)


def sms() -> int:
    return device_facts(torch.device("cuda", 0))[0]


FP8_WEIGHTS = pytest.param(
    torch.float8_e4m3fn, id="fp8", marks=pytest.mark.skipif(capability() < (8, 9), reason="fp8 needs sm89+")
)
QDTYPES = [pytest.param(torch.int8, id="int8"), FP8_WEIGHTS]
DTYPES = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])


def check_graph_replay(x, weight, scale, bias, config, reference, input_act=None) -> None:
    """Capture tuned_linear once, replay it on fresh inputs: within the bf16 bound of reference(x)."""
    static_x = x.clone()
    tuned_linear(static_x, weight, scale, bias, config=config, input_act=input_act)  # tune / compile outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = tuned_linear(static_x, weight, scale, bias, config=config, input_act=input_act)
    for seed in range(2):
        fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
        static_x.copy_(fresh)
        graph.replay()
        assert relative_error(static_out, reference(fresh.float())) < TOL[torch.bfloat16]


def tuned_calls(monkeypatch) -> list[int]:
    """The row count of every tuned_linear call the layers make from now on (fused kernels on: an
    earlier engine in this process may have switched them off)."""
    calls: list[int] = []
    monkeypatch.setattr(kernels, "_enabled", True)
    monkeypatch.setattr(quant, "tuned_linear", lambda *a, **k: calls.append(a[0].shape[0]) or tuned_linear(*a, **k))
    return calls


def built_in_bf16_on_gpu(make):
    """make() with bfloat16 as the default dtype and the GPU as the default device."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return make()
    finally:
        torch.set_default_dtype(previous)
