"""kernels/tuned_gemm.py with 8-bit weights: the three paths (GEMV kernel, dot kernel, dequantise +
matmul) in Triton's CPU interpreter against the reference, and the tuner's bookkeeping (which it
can check without a GPU: timing itself is CUDA-graph work, covered in
tests/gpu/test_quant_kernels.py). 16-bit weights: test_dense_linear.py.

Small odd shapes keep the interpreter quick. bfloat16 runs the GEMV and dequantise paths only:
the interpreter's tl.dot on bfloat16 is wrong, and its float32 -> bfloat16 cast truncates (so
bf16 outputs are within 2^-8, not 2^-9, and the dequantised weight is not bit-identical).
"""

from __future__ import annotations

import logging

import pytest
import torch

from helpers.markers import needs_interpreter
from helpers.quant_cases import INTERP_GEMV, INTERP_SHAPE, LLAMA8B, TOL, check_kernel, make_case
from shardserve.kernels import int8_mma, tuned_gemm, weight_convert
from shardserve.kernels.gemm_kernels import DEQUANT, KernelConfig
from shardserve.kernels.tuned_gemm import (
    DECODE_MAX_TOKENS,
    GEMV_MAX_TOKENS,
    candidates,
    pick_config,
    tuned_linear,
)
from shardserve.kernels.weight_formats import dequantize

pytest.importorskip("triton")
N, K = INTERP_SHAPE
interpreter = needs_interpreter
QDTYPES = [pytest.param(torch.int8, id="int8"), pytest.param(torch.float8_e4m3fn, id="fp8")]
GEMV = [*INTERP_GEMV, KernelConfig(16, 16, 64, 1, num_warps=8, kernel="gemv")]  # + masked rows of 17 and 64
DOT = [KernelConfig(16, 16, 32, 1), KernelConfig(32, 32, 64, 2, num_stages=2), KernelConfig(64, 64, 32, 1, num_stages=3),
       KernelConfig(16, 64, 32, 2, swap_ab=True), KernelConfig(32, 16, 64, 1, swap_ab=True)]


@interpreter
@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_every_path_matches_the_reference(dtype, qdtype):
    configs = [*GEMV, DEQUANT] + (DOT if dtype == torch.float16 else [])
    for m in (1, 3, 16, 17, 64):
        # At most 4 row tiles per GEMV config: the interpreter runs programs one by one.
        for config in (c for c in configs if c.kernel != "gemv" or -(-m // c.block_m) <= 4):
            check_kernel(m, N, K, qdtype, dtype, "cpu", config=config, tol=TOL[dtype], bias=m % 2 == 1, seed=m)
    check_kernel(65, N, K, qdtype, dtype, "cpu", tol=TOL[dtype])  # untuned prefill: dequantise + matmul


@interpreter
@pytest.mark.parametrize("qdtype", QDTYPES)
def test_dequantise_pass_is_the_reference_bit_for_bit(qdtype):
    _, qweight, scale, _ = make_case(1, N, K, qdtype, torch.float16, "cpu")
    assert torch.equal(weight_convert.dequantize_fast(qweight, scale, torch.float16),
                       dequantize(qweight, scale, torch.float16))


def test_candidates_start_with_the_heuristic_and_fit_the_budget():
    for n, k in LLAMA8B.values():
        for m in (1, 2, 3, 4, 16, 17, 64):
            cands = candidates(m, n, k, 132)
            assert cands[0] == pick_config(m, n, k, 132)
            assert len(set(cands)) == len(cands) <= (13 if m <= 2 else 9 if m <= 16 else 5)
            # 3-16 rows: the wide and the long-K dot tiles too (the dot kernel is all 8-bit has there)
            assert {(128, 128), (32, 512)} <= {(c.block_n, c.block_k) for c in cands} or m > 16
            assert not any(c.swap_ab for c in cands)  # it lost every 8-bit shape of the sweep
            assert any(c.kernel == "gemv" for c in cands) == (m <= GEMV_MAX_TOKENS)
            for c in cands:
                assert c.kernel == "gemv" or c.block_m >= 16  # tl.dot needs 16 rows
                assert c.split_k == 1 or -(-k // c.block_k) >= 2 * c.split_k  # >= 2 K tiles per split
                if c.kernel == "gemv":  # 64 float32 accumulators per thread
                    assert c.block_m * c.block_n * c.block_k == 64 * 32 * c.num_warps
    assert pick_config(DECODE_MAX_TOKENS + 1, 4096, 4096, 132) == DEQUANT


def test_the_cuda_int8_kernel_is_offered_where_it_applies(monkeypatch):
    """kernels/int8_mma.py runs only on a GPU with NVRTC (never on this CPU); where it can, the
    tuner offers it for int8 weights at <= 8 rows with K a multiple of 64 (its 128-wide K blocks
    where K is a multiple of 128), and not when the engine switched it off (extra int8_mma=false)."""
    assert not int8_mma.available()  # no CUDA here
    assert not any(c.kernel == "mma" for c in candidates(4, 4096, 4096, 132))
    monkeypatch.setattr(int8_mma, "_supported", lambda: True)
    mma = lambda *args: [c for c in candidates(*args) if c.kernel == "mma"]  # noqa: E731
    for m in (1, 4, 8):
        assert len(mma(m, 4096, 4096, 132)) == len(tuned_gemm._MMA_TILES)
    assert all(str(c).startswith("mma ") and c.block_n % 16 == 0 for c in mma(4, 4096, 4096, 132))
    assert {c.block_k for c in mma(4, 4096, 4096, 132)} == {64, 128}
    assert {c.block_k for c in mma(4, 4096, 4160, 132)} == {64}  # 65 blocks of 64
    assert not mma(9, 4096, 4096, 132) and not mma(4, 4096, 4000, 132)
    assert not mma(4, 4096, 4096, 132, torch.float8_e4m3fn) and not mma(4, 4096, 4096, 132, torch.bfloat16)
    assert mma(4, 4096, 4096, 132, torch.int8, "silu_and_mul")  # the activation runs first
    monkeypatch.setattr(int8_mma, "_enabled", False)
    assert not mma(4, 4096, 4096, 132)


def _fake_timer(times: dict):
    """timer(fn, weight) -> times[config], running fn once (it must be callable as the real one is)."""
    def timer(fn, weight):
        fn(weight=weight)
        return times[fn.args[0]]
    return timer


@interpreter
def test_tune_takes_the_fastest_config_that_is_right(monkeypatch, caplog):
    x, qweight, scale, bias = make_case(1, N, K, torch.int8, torch.float16, "cpu")
    slow, fast, broken = GEMV[0], DOT[0], DOT[1]
    real_run = tuned_gemm.run_config

    def run(cfg, *args, **kw):
        out = real_run(cfg, *args, **kw)
        return out * 1.5 if cfg == broken else out  # a miscompiled kernel

    monkeypatch.setattr(tuned_gemm, "run_config", run)
    with caplog.at_level(logging.WARNING, logger=tuned_gemm.__name__):
        cfg, times = tuned_gemm._tune(x, qweight, scale, bias, [slow, fast, broken],
                                     _fake_timer({slow: 9.0, fast: 5.0, broken: 1.0}))
    assert cfg == fast and set(times) == {slow, fast}
    assert "off by" in caplog.text


@interpreter
def test_decode_batches_tune_once_per_row_class_and_never_while_capturing(monkeypatch):
    tuned = []

    def tune(x2, qweight, scale, bias, configs, timer, input_act):
        tuned.append(x2.shape[0])
        return configs[-1], {}

    monkeypatch.setattr(tuned_gemm, "_TUNED", {})
    monkeypatch.setattr(tuned_gemm, "_tune", tune)
    monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: True)
    for m in (3, 4, 1, 4, 100):  # 3 and 4 share a class; 100 is prefill, never tuned
        x, qweight, scale, bias = make_case(m, N, K, torch.int8, torch.float16, "cpu")
        tuned_linear(x, qweight, scale, bias)  # runs the chosen config in the interpreter
    assert tuned == [3, 1]
    x, qweight, scale, _ = make_case(4, N, K, torch.int8, torch.float16, "cpu")
    assert tuned_gemm.chosen_config(x, qweight, scale) == candidates(4, N, K, 132)[-1]
    # While a CUDA graph is captured (or without a GPU, or tuning off) the heuristic serves, uncached.
    monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: False)
    x = torch.randn(16, K).half()
    assert tuned_gemm.chosen_config(x, qweight, scale) == pick_config(16, N, K, 132)
    assert tuned == [3, 1] and len(tuned_gemm._TUNED) == 2


def test_no_tuning_on_the_cpu_or_when_switched_off(monkeypatch):
    assert not tuned_gemm._can_tune(torch.randn(1, 8))
    monkeypatch.setattr(tuned_gemm, "TUNE", False)
    assert not tuned_gemm._can_tune(torch.randn(1, 8))
