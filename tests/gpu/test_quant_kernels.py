"""The tuned linear path on the GPU with 8-bit weights: every path of tuned_linear against its
reference on random inputs (int8 and fp8 weights, fp16 and bf16 activations, decode and prefill
shapes, forced tilings, every config the tuner may pick, the tuned choice itself), every variant
of the CUDA int8 kernel (kernels/int8_mma.py) element by element, inside a CUDA graph, the
quantised layers' (and untied LM heads') choice of path, and FP8 torch._scaled_mm on Hopper.
16-bit weights: test_dense_kernels.py; input activations fused into the matmul:
test_act_gemm_kernels.py."""

from __future__ import annotations

import logging

import pytest
import torch
import triton
import triton.language as tl

from helpers.gpu_linear import (
    DTYPES,
    FP8_WEIGHTS,
    QDTYPES,
    built_in_bf16_on_gpu,
    capability,
    check_graph_replay,
    sms,
    tuned_calls,
)
from helpers.quant_cases import (
    CONFIGS,
    OTHER_PATHS,
    SHAPES,
    TOL,
    check_kernel,
    make_case,
    relative_error,
)
from helpers.quant_layers import error_bound
from shardserve.kernels import int8_mma, pdl, tuned_gemm
from shardserve.kernels.fp8_gemm import fp8_scaled_mm, fp8_scaled_mm_reference, scaled_mm_applies
from shardserve.kernels.gemm_kernels import DEQUANT, KernelConfig
from shardserve.kernels.pdl import pdl_args, pdl_entry
from shardserve.kernels.tuned_gemm import candidates, mma_config, pick_config, tuned_linear
from shardserve.kernels.weight_formats import linear_reference
from shardserve.layers import quant
from shardserve.layers.embedding import ParallelLMHead
from shardserve.layers.linear import ColumnParallelLinear

HOPPER = pytest.mark.skipif(capability() < (9, 0), reason="torch._scaled_mm row-wise fp8 needs sm90+")
# Prefill tiles for the dot kernel (tensor cores at full size), offered as an alternative to the
# dequantise + cuBLAS path that prefill runs.
PREFILL_TILES = [KernelConfig(128, 128, 64, 1, num_warps=8, num_stages=3), KernelConfig(64, 128, 128, 1, num_stages=3)]


@pytest.mark.parametrize("qdtype", QDTYPES)
@DTYPES
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_reference(shape, dtype, qdtype, fresh_tuning):
    for config in [None, *CONFIGS, *OTHER_PATHS]:  # None: tuned here (decode sizes)
        check_kernel(*shape, qdtype, dtype, "cuda", config=config, tol=TOL[dtype])
    check_kernel(*shape, qdtype, dtype, "cuda", tol=TOL[dtype], bias=False, strided=True)


@pytest.mark.parametrize("qdtype", QDTYPES)
@DTYPES
@pytest.mark.parametrize("shape", [(1, 4096, 4096), (2, 6144, 4096), (4, 512, 14336), (64, 768, 4096)], ids=str)
def test_every_tuning_candidate_matches_reference(shape, dtype, qdtype):
    m, n, k = shape
    for config in candidates(m, n, k, sms(), qdtype):
        check_kernel(m, n, k, qdtype, dtype, "cuda", config=config, tol=TOL[dtype], bias=m % 2 == 1)


MMA_TILES = [v for v in int8_mma.VARIANTS if v[2] != 2]  # one or three K blocks in flight


@DTYPES
@pytest.mark.parametrize("tiles", MMA_TILES, ids=str)
def test_int8_mma_matches_reference_elementwise(tiles, dtype):
    """Every variant of the CUDA int8 kernel against the reference, element by element (a wrong
    operand layout or K order shows in single outputs): 1-8 rows, fewer K blocks than warps,
    features past the last full tile, bias or none, strided and misaligned activations."""
    assert int8_mma.available()
    config = mma_config(*tiles)
    kblock = config.block_k  # K: one block, fewer blocks than warps, many blocks
    cases = [(1, 200, 5 * kblock, {}), (3, 72, kblock, {}), (8, 4096, 4096, {"bias": False}), (5, 130, 14336, {}),
             (2, 96, 8 * kblock, {"strided": True})]
    for m, n, k, kw in cases:
        x, qweight, scale, bias = make_case(m, n, k, torch.int8, dtype, "cuda", seed=m, **kw)
        ref = linear_reference(x.float(), qweight, scale, None if bias is None else bias.float())
        out = tuned_linear(x, qweight, scale, bias, config=config)
        assert out.shape == (m, n) and out.dtype == dtype
        worst = float((out.float() - ref).abs().max() / ref.abs().max())
        assert worst < TOL[dtype], f"{(m, n, k, kw, tiles)}: max error {worst:.2e} of the largest output"
    misaligned = torch.randn(4 * 1280 + 1, device="cuda", dtype=dtype)[1:].view(4, 1280)  # 2 bytes off
    _, qweight, scale, bias = make_case(4, 64, 1280, torch.int8, dtype, "cuda")
    ref = linear_reference(misaligned.float(), qweight, scale, bias.float())
    assert relative_error(tuned_linear(misaligned, qweight, scale, bias, config=config), ref) < TOL[dtype]


def test_int8_mma_replays_in_a_cuda_graph():
    x, qweight, scale, bias = make_case(4, 1024, 4096, torch.int8, torch.bfloat16, "cuda")
    check_graph_replay(x, qweight, scale, bias, mma_config(2, 8, 1),
                       lambda x32: linear_reference(x32, qweight, scale, bias.float()))


@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _late_copy_kernel(src, dst, n, ns, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """dst = src after `ns` ns; lets its successor launch at once (as a norm kernel does)."""
    pdl_entry(PDL)
    start = _now()
    while _now() - start < ns:
        pass
    offs = tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


@pytest.mark.skipif(capability() < (9, 0), reason="programmatic dependent launch needs sm90+")
@pytest.mark.parametrize("tiles", [(2, 8, 1, 1), (1, 16, 2, 1), (4, 4, 3, 1), (2, 8, 1, 2)], ids=str)
def test_int8_mma_launched_early_waits_for_its_input(tiles, monkeypatch):
    """Launched with PDL, the kernel loads weights while its predecessor runs, but reads the
    activations only after it: behind a kernel that writes them 20 us after letting it launch,
    eagerly and replayed from a CUDA graph, the output is that of the new activations, not of the
    old ones."""
    monkeypatch.setattr(pdl, "_enabled", True)
    x, qweight, scale, bias = make_case(4, 6144, 4096, torch.int8, torch.bfloat16, "cuda")
    fresh = torch.randn_like(x)
    config = mma_config(*tiles)

    def chain():
        _late_copy_kernel[(1,)](fresh, x, x.numel(), 20_000, BLOCK=triton.next_power_of_2(x.numel()),
                                **pdl_args(x))
        return tuned_linear(x, qweight, scale, bias, config=config)

    ref = linear_reference(fresh.float(), qweight, scale, bias.float())
    stale = linear_reference(x.float(), qweight, scale, bias.float())
    assert relative_error(stale, ref) > 0.5  # the two inputs tell apart
    assert relative_error(chain(), ref) < TOL[torch.bfloat16]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    for seed in range(2):
        x.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x))
        fresh.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 10)).to(x))
        graph.replay()
        ref = linear_reference(fresh.float(), qweight, scale, bias.float())
        assert relative_error(out, ref) < TOL[torch.bfloat16]


@pytest.mark.parametrize("qdtype", QDTYPES)
@DTYPES
@pytest.mark.parametrize("m", [65, 300])
def test_prefill_paths_match_reference(m, dtype, qdtype):
    for config in [None, DEQUANT, *PREFILL_TILES]:
        check_kernel(m, 1000, 4096, qdtype, dtype, "cuda", config=config, tol=TOL[dtype])
    # Dequantise + cuBLAS forms the reference's weight bit for bit, so it is the reference.
    x, qweight, scale, bias = make_case(m, 1000, 4096, qdtype, dtype, "cuda")
    assert torch.equal(tuned_linear(x, qweight, scale, bias), linear_reference(x, qweight, scale, bias))


def test_tuning_times_every_candidate_and_caches_the_fastest(fresh_tuning, timed, caplog):
    x, qweight, scale, bias = make_case(1, 4096, 4096, torch.int8, torch.bfloat16, "cuda")
    with caplog.at_level(logging.WARNING, logger=tuned_gemm.__name__):
        out = tuned_linear(x, qweight, scale, bias)
    assert not caplog.records  # no candidate was off, tuning did not fail
    ((key, cfg),) = fresh_tuning.items()
    assert key[:3] == (1, 4096, 4096) and set(timed) == set(candidates(1, 4096, 4096, sms()))
    assert all(0 < t < 1000 for t in timed.values()) and cfg == min(timed, key=timed.get)
    ref = linear_reference(x.float(), qweight, scale, bias.float())
    assert relative_error(out, ref) < TOL[torch.bfloat16]
    # A batch class first met inside a capture: the heuristic, nothing timed or cached.
    x8 = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    tuned_linear(x8, qweight, scale, bias, config=pick_config(8, 4096, 4096, sms()))  # compiled outside
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert tuned_gemm.chosen_config(x8, qweight, scale) == pick_config(8, 4096, 4096, sms())
        tuned_linear(x8, qweight, scale, bias)
    graph.replay()
    assert len(fresh_tuning) == 1


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize(
    ("shape", "config"),
    [((4, 4096, 4096), None), ((4, 512, 14336), KernelConfig(16, 32, 256, 4)),
     ((1, 512, 14336), KernelConfig(1, 16, 512, 4, kernel="gemv"))],
    ids=["tuned", "split-k", "gemv-split-k"],
)
def test_kernel_replays_in_a_cuda_graph(shape, config, qdtype, fresh_tuning):
    """Decode runs in CUDA graphs: split-K's zeroed workspace and cast must be captured too."""
    x, qweight, scale, bias = make_case(*shape, qdtype, torch.bfloat16, "cuda")
    check_graph_replay(x, qweight, scale, bias, config, lambda f: linear_reference(f, qweight, scale, bias.float()))


@pytest.mark.parametrize("quantization", ["int8", pytest.param("fp8", marks=FP8_WEIGHTS.marks)])
@pytest.mark.parametrize("kind", ["column", "lm_head"])
def test_layer_uses_the_kernel_for_decode_and_stays_within_the_bound(kind, quantization, monkeypatch):
    """A quantised linear layer, and the untied LM head quantised with it (compute_logits)."""
    calls = tuned_calls(monkeypatch)

    def make():
        with quant.linear_quantization(quantization):
            return ColumnParallelLinear(1024, 768, bias=True) if kind == "column" else ParallelLMHead(768, 1024)

    layer = built_in_bf16_on_gpu(make)
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(768, 1024, generator=gen), torch.randn(768, generator=gen)
    layer.weight.weight_loader(layer.weight, w.bfloat16(), None)
    if kind == "column":
        layer.bias.weight_loader(layer.bias, b.bfloat16(), None)
    else:  # no bias, float32 logits
        b = torch.zeros(768)
        assert layer.weight.dtype == quant.get_linear_method(quantization).qdtype
    for tokens in (1, 4, 300):  # all through tuned_linear, except bf16 fp8 prefill on Hopper: fp8 GEMM
        x = torch.randn(tokens, 1024, generator=gen).bfloat16()
        with torch.no_grad():
            out = (layer(x.cuda()) if kind == "column" else layer.compute_logits(x.cuda())).float().cpu()
        w16 = w.bfloat16().float()  # what the checkpoint held
        ref = x.float() @ w16.T + b.bfloat16().float()
        # Beyond the quantisation bound: bf16 rounding of the output and of dequantised weights
        # (2^-9 each), and for fp8 prefill (W8A8) the activations' e4m3 rounding (2^-4).
        w8a8 = quantization == "fp8" and tokens > 64 and capability() >= (9, 0)
        slack = (x.float().abs() @ w16.abs().T) * (2**-8 + (2**-4 if w8a8 else 0))
        assert torch.all((out - ref).abs() <= error_bound(x.float(), w16, quantization) + slack), tokens
    fp8_gemm = scaled_mm_applies(torch.empty(300, 1024, device="cuda", dtype=torch.bfloat16), layer.weight)
    assert calls == [1, 4] + ([] if fp8_gemm else [300])


@HOPPER
def test_fp8_scaled_mm_matches_its_reference():
    x, qweight, scale, bias = make_case(300, 1024, 4096, torch.float8_e4m3fn, torch.bfloat16, "cuda")
    assert scaled_mm_applies(x, qweight)
    out = fp8_scaled_mm(x, qweight, scale, bias)
    assert relative_error(out, fp8_scaled_mm_reference(x, qweight, scale, bias)) < TOL[torch.bfloat16]
    # Against weight-only (bf16 activations): the activations' rounding, 2^-4 at most per value.
    assert relative_error(out, linear_reference(x.float(), qweight, scale, bias.float())) < 0.05
