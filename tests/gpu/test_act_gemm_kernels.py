"""Input activations fused into the tuned matmul on the GPU (kernels/act_and_mul.py): bit for bit
against the same config fed the activation kernel's output, the tuner timing every candidate
with the activation, CUDA-graph replay, and the row-parallel layer's fused path."""

from __future__ import annotations

import pytest
import torch

from helpers.act_gemm_cases import ACTS, check_fused_act, make_act_case
from helpers.gpu_linear import DTYPES, FP8_WEIGHTS, QDTYPES, check_graph_replay, sms
from helpers.quant_cases import TOL, relative_error
from shardserve import kernels
from shardserve.kernels import int8_mma
from shardserve.kernels.act_and_mul import apply_input_act, input_act_reference
from shardserve.kernels.gemm_kernels import CUBLAS, DEQUANT, KernelConfig
from shardserve.kernels.tuned_gemm import CUBLAS_MARGIN, DECODE_MAX_TOKENS, candidates, tuned_linear
from shardserve.kernels.weight_formats import linear_reference
from shardserve.layers import quant
from shardserve.layers.linear import RowParallelLinear

ACT_QDTYPES = [pytest.param(None, id="16bit"), *QDTYPES]
# GEMV one row per program and two with a ragged split; dot unsplit and split 4 ways.
ACT_KERNELS = [KernelConfig(1, 16, 512, 1, kernel="gemv"), KernelConfig(2, 16, 128, 3, num_warps=8, kernel="gemv"),
               KernelConfig(16, 32, 256, 1), KernelConfig(16, 64, 128, 4)]


@pytest.mark.parametrize("qdtype", ACT_QDTYPES)
@DTYPES
@pytest.mark.parametrize("act", ACTS)
def test_input_act_is_fused_bit_for_bit(act, dtype, qdtype):
    """Each path with the activation equals the same config fed act_kernel's output (cuBLAS and
    dequantise: apply_input_act's), bit for bit, and float32 sums within the output rounding."""
    for shape in [(1, 1024, 4096), (17, 96, 264)]:  # the second: masked rows, a short K tile
        for config in [*ACT_KERNELS, CUBLAS if qdtype is None else DEQUANT]:
            check_fused_act(*shape, qdtype, dtype, "cuda", config, act, tol=TOL[dtype])


@pytest.mark.parametrize("qdtype", [pytest.param(None, id="16bit"), pytest.param(torch.int8, id="int8")])
def test_tuning_with_an_input_activation_times_it_in_every_candidate(qdtype, fresh_tuning, timed):
    """Llama-3-8B's down_proj at batch 1, bf16: tuned with gated SiLU and without, separately; with
    it every kernel is timed fused and with the activation apart, and the cuBLAS candidate pays
    for its activation kernel, so it is timed slower than without it."""
    m, n, k = 1, 4096, 14336
    x, w, scale, _ = make_act_case(m, n, k, qdtype, torch.bfloat16, "cuda", "silu_and_mul", bias=False)
    plain = apply_input_act(x, "silu_and_mul")
    tuned_linear(plain, w, scale)
    without = dict(timed)
    timed.clear()
    check_fused_act(m, n, k, qdtype, torch.bfloat16, "cuda", None, "silu_and_mul", tol=TOL[torch.bfloat16],
                    bias=False)
    assert set(without) == set(candidates(m, n, k, sms(), w.dtype))
    assert set(timed) == set(candidates(m, n, k, sms(), w.dtype, "silu_and_mul")) > set(without)
    assert {key[-1] for key in fresh_tuning} == {None, "silu_and_mul"}
    cfg = fresh_tuning[(1, n, k, w.dtype, torch.bfloat16, x.device, int8_mma.enabled(), "silu_and_mul")]
    fastest = min(timed, key=timed.get)
    assert cfg == (CUBLAS if CUBLAS in timed and timed[fastest] > CUBLAS_MARGIN * timed[CUBLAS] else fastest)
    print({str(c): (round(without.get(c, 0), 2), round(timed[c], 2)) for c in timed}, "->", cfg)
    if qdtype is None:
        assert timed[CUBLAS] > without[CUBLAS]  # silu_and_mul's kernel is inside the timing


@pytest.mark.parametrize("qdtype", ACT_QDTYPES)
@pytest.mark.parametrize("config", [KernelConfig(16, 32, 256, 4), KernelConfig(1, 16, 512, 4, kernel="gemv"), None],
                         ids=["split-k", "gemv-split-k", "cublas-or-dequant"])
def test_input_act_replays_in_a_cuda_graph(config, qdtype):
    """Gated SiLU in the kernels' prologue, or silu_and_mul's kernel before cuBLAS, captured too."""
    x, w, scale, bias = make_act_case(4, 512, 14336, qdtype, torch.bfloat16, "cuda", "silu_and_mul")
    config = config or (CUBLAS if qdtype is None else DEQUANT)
    check_graph_replay(x, w, scale, bias, config,
                        lambda f: linear_reference(input_act_reference(f.to(x.dtype), "silu_and_mul").float(), w,
                                                   scale, bias.float()), input_act="silu_and_mul")


@pytest.mark.parametrize("quantization", [None, "int8", pytest.param("fp8", marks=FP8_WEIGHTS.marks)])
def test_row_parallel_layer_fuses_its_input_activation(quantization, monkeypatch, fresh_tuning):
    """Decode sizes: the fused path, within bf16 rounding of the layer fed the activation on its
    own; prefill (fp8 on Hopper: W8A8 after the activation): the same computation, bit for bit."""
    monkeypatch.setattr(kernels, "_enabled", True)  # an earlier engine may have switched them off
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"), quant.linear_quantization(quantization):
            layer = RowParallelLinear(2048, 768, bias=True)
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator().manual_seed(0)
    layer.weight.weight_loader(layer.weight, torch.randn(768, 2048, generator=gen).bfloat16(), None)
    layer.bias.data.copy_(torch.randn(768, generator=gen))
    for tokens in (1, 4, 300):
        gate_up = torch.randn(tokens, 2 * 2048, generator=gen).mul(2).to("cuda", torch.bfloat16)
        with torch.no_grad():
            fused = layer(gate_up, input_act="silu_and_mul")
            unfused = layer(apply_input_act(gate_up, "silu_and_mul"))
        if tokens > DECODE_MAX_TOKENS:
            assert torch.equal(fused, unfused)
        assert relative_error(fused, unfused.float()) < TOL[torch.bfloat16], tokens
