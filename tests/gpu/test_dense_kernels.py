"""The tuned linear path on the GPU with 16-bit weights (the unquantised linear layers and the LM
head): every path against F.linear in float32, every tuning candidate, the tuner against cuBLAS,
CUDA-graph replay, and the layers' choice of path at decode and prefill sizes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from helpers.gpu_linear import DTYPES, built_in_bf16_on_gpu, check_graph_replay, sms, tuned_calls
from helpers.quant_cases import (
    CONFIGS,
    DENSE_PATHS,
    SHAPES,
    TOL,
    check_kernel,
    make_case,
    relative_error,
)
from shardserve.kernels import tuned_gemm
from shardserve.kernels.gemm_kernels import CUBLAS, KernelConfig
from shardserve.kernels.tuned_gemm import (
    CUBLAS_MARGIN,
    DECODE_MAX_TOKENS,
    _pow2,
    candidates,
    tuned_linear,
)
from shardserve.layers.embedding import VocabParallelEmbedding
from shardserve.layers.linear import ColumnParallelLinear


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
    for config in candidates(m, n, k, sms(), dtype):
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
    assert set(timed) == set(candidates(m, n, k, sms(), torch.bfloat16)) and CUBLAS in timed
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
    check_graph_replay(x, w, None, bias, config, lambda f: F.linear(f, w.float(), bias.float()))


def test_unquantised_layer_and_lm_head_take_the_tuned_path_at_decode_sizes(monkeypatch, fresh_tuning):
    calls = tuned_calls(monkeypatch)
    layer, head = built_in_bf16_on_gpu(lambda: (ColumnParallelLinear(1024, 768, bias=True), VocabParallelEmbedding(5000, 1024)))
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
