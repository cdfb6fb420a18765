"""The tuned linear path on the GPU: every path of tuned_linear against its reference on random
inputs (int8, fp8 and 16-bit weights, fp16 and bf16 activations, decode and prefill shapes,
forced tilings, every config the tuner may pick, the tuned choice itself), inside a CUDA graph,
the quantised and unquantised layers' (and LM heads', 8-bit when untied and quantised) choice
of path, FP8 torch._scaled_mm on Hopper, and input activations fused into the matmul."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from helpers.act_gemm_cases import ACTS, check_fused_act, make_act_case
from helpers.quant_cases import (
    CONFIGS,
    DENSE_PATHS,
    OTHER_PATHS,
    SHAPES,
    check_kernel,
    make_case,
    relative_error,
)
from helpers.quant_layers import error_bound
from shardserve import kernels
from shardserve.kernels import tuned_gemm
from shardserve.kernels.act_and_mul import apply_input_act, input_act_reference
from shardserve.kernels.fp8_gemm import fp8_scaled_mm, fp8_scaled_mm_reference, scaled_mm_applies
from shardserve.kernels.gemm_kernels import CUBLAS, DEQUANT, KernelConfig
from shardserve.kernels.tuned_gemm import (
    CUBLAS_MARGIN,
    DECODE_MAX_TOKENS,
    _pow2,
    candidates,
    pick_config,
    tuned_linear,
)
from shardserve.kernels.weight_formats import linear_reference
from shardserve.layers import quant
from shardserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from shardserve.layers.linear import ColumnParallelLinear, RowParallelLinear

# Output rounding of one half-precision value, as a relative error over many: fp16 2^-11, bf16 2^-8.
TOL = {torch.float16: 1.5e-3, torch.bfloat16: 8e-3}


def _capability() -> tuple[int, int]:
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)


FP8_WEIGHTS = pytest.param(
    torch.float8_e4m3fn, id="fp8", marks=pytest.mark.skipif(_capability() < (8, 9), reason="fp8 needs sm89+")
)
QDTYPES = [pytest.param(torch.int8, id="int8"), FP8_WEIGHTS]
HOPPER = pytest.mark.skipif(_capability() < (9, 0), reason="torch._scaled_mm row-wise fp8 needs sm90+")
DTYPES = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
# Prefill tiles for the dot kernel (tensor cores at full size), offered as an alternative to the
# dequantise + cuBLAS path that prefill runs.
PREFILL_TILES = [KernelConfig(128, 128, 64, 1, num_warps=8, num_stages=3), KernelConfig(64, 128, 128, 1, num_stages=3)]


@pytest.fixture
def fresh_tuning(monkeypatch):
    """Tuning on, with an empty cache (restored afterwards)."""
    monkeypatch.setattr(tuned_gemm, "TUNE", True)
    monkeypatch.setattr(tuned_gemm, "_TUNED", {})
    return tuned_gemm._TUNED


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
    for config in candidates(m, n, k, torch.cuda.get_device_properties(0).multi_processor_count):
        check_kernel(m, n, k, qdtype, dtype, "cuda", config=config, tol=TOL[dtype], bias=m % 2 == 1)


@pytest.mark.parametrize("qdtype", QDTYPES)
@DTYPES
@pytest.mark.parametrize("m", [65, 300])
def test_prefill_paths_match_reference(m, dtype, qdtype):
    for config in [None, DEQUANT, *PREFILL_TILES]:
        check_kernel(m, 1000, 4096, qdtype, dtype, "cuda", config=config, tol=TOL[dtype])
    # Dequantise + cuBLAS forms the reference's weight bit for bit, so it is the reference.
    x, qweight, scale, bias = make_case(m, 1000, 4096, qdtype, dtype, "cuda")
    assert torch.equal(tuned_linear(x, qweight, scale, bias), linear_reference(x, qweight, scale, bias))


@pytest.fixture
def timed(monkeypatch) -> dict:
    """Every candidate's time (us) of the tunings that run during the test."""
    times_seen, real_tune = {}, tuned_gemm._tune

    def tune(*args):
        cfg, times = real_tune(*args)
        times_seen.update(times)
        return cfg, times

    monkeypatch.setattr(tuned_gemm, "_tune", tune)
    return times_seen


def test_tuning_times_every_candidate_and_caches_the_fastest(fresh_tuning, timed, caplog):
    x, qweight, scale, bias = make_case(1, 4096, 4096, torch.int8, torch.bfloat16, "cuda")
    with caplog.at_level(logging.WARNING, logger=tuned_gemm.__name__):
        out = tuned_linear(x, qweight, scale, bias)
    assert not caplog.records  # no candidate was off, tuning did not fail
    ((key, cfg),) = fresh_tuning.items()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert key[:3] == (1, 4096, 4096) and set(timed) == set(candidates(1, 4096, 4096, sms))
    assert all(0 < t < 1000 for t in timed.values()) and cfg == min(timed, key=timed.get)
    ref = linear_reference(x.float(), qweight, scale, bias.float())
    assert relative_error(out, ref) < TOL[torch.bfloat16]
    # A batch class first met inside a capture: the heuristic, nothing timed or cached.
    x8 = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    tuned_linear(x8, qweight, scale, bias, config=pick_config(8, 4096, 4096, sms))  # compiled outside
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert tuned_gemm.chosen_config(x8, qweight, scale) == pick_config(8, 4096, 4096, sms)
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
    _check_graph_replay(x, qweight, scale, bias, config, lambda f: linear_reference(f, qweight, scale, bias.float()))


@pytest.mark.parametrize("qdtype", [pytest.param(None, id="16bit"), *QDTYPES])
@DTYPES
@pytest.mark.parametrize("shape", [(1, 4096, 4096), (4, 512, 14336), (16, 130, 520)], ids=str)
def test_stream_k_matches_reference(shape, dtype, qdtype, monkeypatch):
    """Stream-K (gemm_kernels._stream_k_kernel): the configs the tuner offers with it on, and 7
    programs (units split inside N tiles), against the reference; one replayed in a CUDA graph."""
    monkeypatch.setattr(tuned_gemm, "STREAM_K", True)
    m, n, k = shape
    offered = [c for c in candidates(m, n, k, torch.cuda.get_device_properties(0).multi_processor_count,
                                     dtype if qdtype is None else qdtype) if c.stream_k]
    assert len(offered) == 4
    for config in [*offered, KernelConfig(16, 64, 64, 1, stream_k=7)]:
        check_kernel(m, n, k, qdtype, dtype, "cuda", config=config, tol=TOL[dtype], bias=m % 2 == 1)
    x, weight, scale, bias = make_case(m, n, k, qdtype, torch.bfloat16, "cuda")
    _check_graph_replay(x, weight, scale, bias, offered[0], lambda f: linear_reference(f, weight, scale, bias.float()))


def _check_graph_replay(x, weight, scale, bias, config, reference, input_act=None) -> None:
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


def _tuned_calls(monkeypatch) -> list[int]:
    """The row count of every tuned_linear call the layers make from now on (fused kernels on: an
    earlier engine in this process may have switched them off)."""
    calls: list[int] = []
    monkeypatch.setattr(kernels, "_enabled", True)
    monkeypatch.setattr(quant, "tuned_linear", lambda *a, **k: calls.append(a[0].shape[0]) or tuned_linear(*a, **k))
    return calls


def _built_in_bf16_on_gpu(make):
    """make() with bfloat16 as the default dtype and the GPU as the default device."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return make()
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("quantization", ["int8", pytest.param("fp8", marks=FP8_WEIGHTS.marks)])
@pytest.mark.parametrize("kind", ["column", "lm_head"])
def test_layer_uses_the_kernel_for_decode_and_stays_within_the_bound(kind, quantization, monkeypatch):
    """A quantised linear layer, and the untied LM head quantised with it (compute_logits)."""
    calls = _tuned_calls(monkeypatch)

    def make():
        with quant.linear_quantization(quantization):
            return ColumnParallelLinear(1024, 768, bias=True) if kind == "column" else ParallelLMHead(768, 1024)

    layer = _built_in_bf16_on_gpu(make)
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
        w8a8 = quantization == "fp8" and tokens > 64 and _capability() >= (9, 0)
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


# -- 16-bit weights: the unquantised linear layers and the LM head ---------------------------------
def _sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


@DTYPES
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_16bit_paths_match_reference(shape, dtype, fresh_tuning):
    for config in [None, *CONFIGS, *DENSE_PATHS]:  # None: tuned here (decode sizes)
        check_kernel(*shape, None, dtype, "cuda", config=config, tol=TOL[dtype], bias=shape[0] % 2 == 1)
    check_kernel(*shape, None, dtype, "cuda", tol=TOL[dtype], bias=False, strided=True)
    x, w, _, bias = make_case(*shape, None, dtype, "cuda")
    assert torch.equal(tuned_linear(x, w, None, bias, config=CUBLAS), F.linear(x, w, bias))


@DTYPES
@pytest.mark.parametrize(
    "shape", [(1, 4096, 4096), (2, 6144, 4096), (4, 512, 14336), (16, 4096, 4096), (33, 768, 4096), (64, 1000, 4096)],
    ids=str,
)
def test_every_16bit_tuning_candidate_matches_reference(shape, dtype):
    m, n, k = shape
    for config in candidates(m, n, k, _sms(), dtype):
        check_kernel(m, n, k, None, dtype, "cuda", config=config, tol=TOL[dtype], bias=m % 2 == 1)


@pytest.mark.parametrize("shape", [(1, 4096, 4096), (16, 6144, 4096)], ids=str)
def test_16bit_tuning_times_cublas_and_every_kernel_and_keeps_cublas_unless_beaten(shape, fresh_tuning, timed, caplog):
    m, n, k = shape
    x, w, _, bias = make_case(m, n, k, None, torch.bfloat16, "cuda", bias=False)
    with caplog.at_level(logging.WARNING, logger=tuned_gemm.__name__):
        out = tuned_linear(x, w)
    assert not caplog.records  # no candidate was off, tuning did not fail
    ((key, cfg),) = fresh_tuning.items()
    assert key[:5] == (_pow2(m), n, k, torch.bfloat16, torch.bfloat16)
    assert set(timed) == set(candidates(m, n, k, _sms(), torch.bfloat16)) and CUBLAS in timed
    assert all(0 < t < 1000 for t in timed.values())
    fastest = min(timed, key=timed.get)
    assert cfg == (fastest if timed[fastest] <= CUBLAS_MARGIN * timed[CUBLAS] else CUBLAS)
    print({str(c): round(t, 2) for c, t in timed.items()}, "->", cfg)
    if cfg == CUBLAS:
        assert torch.equal(out, F.linear(x, w))
    assert relative_error(out, F.linear(x.float(), w.float())) < TOL[torch.bfloat16]
    assert tuned_gemm._tuning_stream.cache_info().currsize == 1  # one timing stream, not one per tune
    # A batch class first met inside a capture: cuBLAS, nothing timed or cached.
    x8 = torch.randn(8, k, device="cuda", dtype=torch.bfloat16)  # class 8: not tuned above
    F.linear(x8, w)  # cuBLAS's workspace outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert tuned_gemm.chosen_config(x8, w) == CUBLAS
        static_out = tuned_linear(x8, w)
    graph.replay()
    assert relative_error(static_out, F.linear(x8.float(), w.float())) < TOL[torch.bfloat16]
    assert len(fresh_tuning) == 1


@pytest.mark.parametrize(
    ("shape", "config"),
    [((4, 4096, 4096), None), ((4, 512, 14336), KernelConfig(16, 32, 256, 4)),
     ((16, 768, 4096), KernelConfig(16, 16, 256, 2)), ((1, 512, 14336), KernelConfig(1, 16, 512, 4, kernel="gemv")),
     ((2, 512, 4096), CUBLAS)],
    ids=["tuned", "split-k", "16-wide-split-k", "gemv-split-k", "cublas"],
)
def test_16bit_kernel_replays_in_a_cuda_graph(shape, config, fresh_tuning):
    x, w, _, bias = make_case(*shape, None, torch.bfloat16, "cuda")
    _check_graph_replay(x, w, None, bias, config, lambda f: F.linear(f, w.float(), bias.float()))


def test_unquantised_layer_and_lm_head_take_the_tuned_path_at_decode_sizes(monkeypatch, fresh_tuning):
    calls = _tuned_calls(monkeypatch)
    layer, head = _built_in_bf16_on_gpu(lambda: (ColumnParallelLinear(1024, 768, bias=True), VocabParallelEmbedding(5000, 1024)))
    gen = torch.Generator().manual_seed(0)
    for p in (layer.weight, layer.bias, head.weight):
        p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    for tokens in (1, 4, DECODE_MAX_TOKENS, DECODE_MAX_TOKENS + 1, 300):
        x = torch.randn(tokens, 1024, generator=gen).to("cuda", torch.bfloat16)
        with torch.no_grad():
            out, logits = layer(x), head.compute_logits(x)
        if tokens > DECODE_MAX_TOKENS:  # prefill: exactly the F.linear it always was
            assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
            assert torch.equal(logits, F.linear(x, head.weight).float())
        ref = F.linear(x.float(), layer.weight.float(), layer.bias.float())
        assert relative_error(out, ref) < TOL[torch.bfloat16], tokens
        assert relative_error(logits, F.linear(x.float(), head.weight.float())) < TOL[torch.bfloat16], tokens
    assert calls == [1, 1, 4, 4, DECODE_MAX_TOKENS, DECODE_MAX_TOKENS]
    # Both shapes tuned at 1, 4 and 64 rows.
    assert sorted(key[:3] for key in fresh_tuning) == sorted(
        (m, n, 1024) for m in (1, 4, DECODE_MAX_TOKENS) for n in (768, 5000))


# -- input activations fused into the matmul (kernels/act_and_mul.py) ------------------------------
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
    assert set(without) == set(candidates(m, n, k, _sms(), w.dtype))
    assert set(timed) == set(candidates(m, n, k, _sms(), w.dtype, "silu_and_mul")) > set(without)
    assert {key[-1] for key in fresh_tuning} == {None, "silu_and_mul"}
    cfg = fresh_tuning[(1, n, k, w.dtype, torch.bfloat16, x.device, "silu_and_mul")]
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
    _check_graph_replay(x, w, scale, bias, config,
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
