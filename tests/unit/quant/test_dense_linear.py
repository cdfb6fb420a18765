"""16-bit weights through the tuned path (the unquantised linear layers and the LM head): the
Triton kernels with QUANTIZED off in Triton's CPU interpreter against F.linear, the tuner's
cuBLAS candidate and margin, and the layer dispatch, which must leave every CPU result exactly
F.linear's (timing itself is CUDA-graph work: tests/gpu/test_dense_kernels.py).

float16 runs every kernel; bfloat16 only the GEMV (the interpreter's bf16 tl.dot is wrong and its
float32 -> bf16 cast truncates, so bf16 outputs are within 2^-8, not 2^-9): tests/gpu runs bf16
compiled.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.markers import needs_interpreter
from helpers.quant_cases import INTERP_GEMV, INTERP_SHAPE, LLAMA8B, TOL, check_kernel, make_case
from shardserve.kernels import tuned_gemm
from shardserve.kernels.act_and_mul import input_act_reference
from shardserve.kernels.gemm_kernels import CUBLAS, KernelConfig
from shardserve.kernels.tuned_gemm import (
    CUBLAS_MARGIN,
    DECODE_MAX_TOKENS,
    GEMV_MAX_TOKENS,
    candidates,
    pick_config,
    tuned_linear,
)
from shardserve.layers import quant
from shardserve.layers.embedding import VocabParallelEmbedding
from shardserve.layers.linear import ColumnParallelLinear, RowParallelLinear

pytest.importorskip("triton")
N, K = INTERP_SHAPE
interpreter = needs_interpreter
DOT = [KernelConfig(16, 16, 32, 1), KernelConfig(16, 32, 64, 3), KernelConfig(32, 64, 32, 2, num_stages=2),
       KernelConfig(64, 32, 64, 1, num_stages=3), KernelConfig(16, 64, 32, 3, swap_ab=True)]
LLAMA = LLAMA8B | {"lm_head": (128256, 4096)}


@interpreter
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_16bit_kernels_match_f_linear(dtype, bias):
    configs = INTERP_GEMV + (DOT if dtype == torch.float16 else [])
    for m in (1, 2, 3, 16, 64):
        # At most 4 row tiles per GEMV config: the interpreter runs programs one by one.
        for config in (c for c in configs if c.kernel != "gemv" or -(-m // c.block_m) <= 4):
            # Against float32 sums (the kernels accumulate in float32 and round once) ...
            check_kernel(m, N, K, None, dtype, "cpu", config=config, tol=TOL[dtype], bias=bias, seed=m)
            if dtype == torch.float16:  # ... and F.linear itself, which on the CPU does the same
                x, w, _, b = make_case(m, N, K, None, dtype, "cpu", bias=bias, seed=m)
                out, ref = tuned_linear(x, w, None, b, config=config), F.linear(x, w, b)
                assert torch.allclose(out.float(), ref.float(), rtol=2**-10, atol=2**-10 * ref.abs().max().item())


@interpreter
def test_16bit_kernel_on_strided_rows_and_a_3d_batch():
    x, w, _, b = make_case(5, N, K, None, torch.float16, "cpu", strided=True)
    ref = F.linear(x.float(), w.float(), b.float())
    out = tuned_linear(x, w, None, b, config=DOT[1])
    assert (out.float() - ref).norm() / ref.norm() < TOL[torch.float16]
    out3 = tuned_linear(x.contiguous().view(5, 1, K), w, None, b, config=INTERP_GEMV[1])
    assert out3.shape == (5, 1, N) and (out3.view(5, N).float() - ref).norm() / ref.norm() < TOL[torch.float16]


def test_16bit_candidates_start_with_cublas_and_fit_the_budget():
    compiles = set()
    for n, k in LLAMA.values():
        for m in (1, 2, 3, 4, 16, 17, 64):
            cands = candidates(m, n, k, 132, torch.bfloat16)
            assert cands[0] == CUBLAS == pick_config(m, n, k, 132, torch.bfloat16)
            assert len(set(cands)) == len(cands) <= (11 if m <= 2 else 7 if m <= 16 else 5)
            assert any(c.kernel == "gemv" for c in cands) == (m <= GEMV_MAX_TOKENS)
            for c in cands[1:]:
                assert c.kernel == "gemv" or (c.block_m >= 16 and c.block_m >= min(m, 64))
                assert c.split_k == 1 or -(-k // c.block_k) >= 2 * c.split_k  # >= 2 K tiles per split
                assert c.block_n * c.block_k * 2 <= 32768  # 32 KB of weight per stage
                assert c.swap_ab == (c.kernel == "dot" and m <= 16)  # swapped below 17 rows
                compiles.add((c.kernel, c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages, c.split_k > 1,
                              c.swap_ab))
    assert len(compiles) <= 22  # Triton compiles for a bf16 Llama (tuning time: ~0.5-1 s each)
    # Untuned (a capture, the CPU, tuning off) and prefill: cuBLAS, as before the tuner existed.
    assert pick_config(DECODE_MAX_TOKENS + 1, 4096, 4096, 132, torch.float16) == CUBLAS
    # The 8-bit candidate sets are unchanged by the 16-bit ones.
    assert candidates(1, 4096, 4096, 132) == candidates(1, 4096, 4096, 132, torch.int8)
    assert CUBLAS not in candidates(1, 4096, 4096, 132, torch.float8_e4m3fn)


@interpreter
def test_every_16bit_candidate_runs_right_on_a_small_odd_shape():
    for m in (1, 2, 17):
        for config in candidates(m, N, K, 132, torch.float16):
            check_kernel(m, N, K, None, torch.float16, "cpu", config=config, tol=TOL[torch.float16], seed=m)


def _fake_timer(times: dict):
    """timer(fn, weight) -> times[config], running fn once (it must be callable as the real one is)."""
    def timer(fn, weight):
        fn(weight=weight)
        return times[fn.args[0]]
    return timer


@interpreter
@pytest.mark.parametrize(
    ("times", "expected"),
    [({CUBLAS: 5.0, DOT[0]: 6.0, INTERP_GEMV[0]: 7.0}, CUBLAS),  # cuBLAS fastest
     ({CUBLAS: 10.0, DOT[0]: 10.0 * CUBLAS_MARGIN + 0.01, INTERP_GEMV[0]: 11.0}, CUBLAS),  # a near tie keeps cuBLAS
     ({CUBLAS: 10.0, DOT[0]: 9.0, INTERP_GEMV[0]: 8.0}, INTERP_GEMV[0])],  # clearly faster: the fastest kernel
    ids=["cublas-fastest", "near-tie", "kernel-faster"],
)
def test_tune_keeps_cublas_unless_a_kernel_beats_it(times, expected):
    x, w, _, b = make_case(1, N, K, None, torch.float16, "cpu")
    cfg, timed = tuned_gemm._tune(x, w, None, b, [CUBLAS, DOT[0], INTERP_GEMV[0]], _fake_timer(times))
    assert cfg == expected and timed == times


@interpreter
def test_16bit_batches_tune_once_per_row_class_and_a_cublas_choice_is_f_linear(monkeypatch):
    tuned = []

    def tune(x2, weight, scale, bias, configs, timer, input_act):
        assert scale is None and configs == candidates(x2.shape[0], N, K, 132, weight.dtype)
        tuned.append(x2.shape[0])
        return (CUBLAS if x2.shape[0] == 1 else DOT[0]), {}

    monkeypatch.setattr(tuned_gemm, "_TUNED", {})
    monkeypatch.setattr(tuned_gemm, "_tune", tune)
    monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: True)
    for m in (3, 4, 1, 1, 100):  # 3 and 4 share a class; 100 is prefill: cuBLAS, never tuned
        x, w, _, b = make_case(m, N, K, None, torch.float16, "cpu", seed=m)
        out = tuned_linear(x, w, None, b)
        if m in (1, 100):  # cuBLAS chosen: the very call the layer made before, bit for bit
            assert torch.equal(out, F.linear(x, w, b))
        else:
            assert torch.allclose(out.float(), F.linear(x, w, b).float(), rtol=2**-10, atol=1e-2)
    assert tuned == [3, 1] and len(tuned_gemm._TUNED) == 2
    # Without a chance to tune (capture, CPU, tuning off): cuBLAS, nothing cached.
    monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: False)
    x, w, _, _ = make_case(16, N, K, None, torch.float16, "cpu")
    assert tuned_gemm.chosen_config(x, w) == CUBLAS and len(tuned_gemm._TUNED) == 2


def _layers(dtype):
    torch.manual_seed(0)
    column = ColumnParallelLinear(96, 80, bias=True).to(dtype)
    row = RowParallelLinear(96, 72, bias=False).to(dtype)
    head = VocabParallelEmbedding(130, 96).to(dtype)
    for p in (*column.parameters(), *row.parameters(), *head.parameters()):
        p.data.normal_()
    return column, row, head


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_cpu_layers_and_lm_head_are_exactly_f_linear(dtype, monkeypatch):
    def no(*args, **kw):
        raise AssertionError("the tuned path must not run on the CPU")

    monkeypatch.setattr(quant, "tuned_linear", no)
    column, row, head = _layers(dtype)
    for tokens in (1, 3, DECODE_MAX_TOKENS, 100):
        x = torch.randn(tokens, 96).to(dtype)
        with torch.no_grad():
            assert torch.equal(column(x), F.linear(x, column.weight, column.bias))
            assert torch.equal(row(x), F.linear(x, row.weight))
            assert torch.equal(head.compute_logits(x), F.linear(x, head.weight).float())


@interpreter
def test_unquantised_layers_take_the_tuned_path_at_decode_sizes(monkeypatch):
    """With fused kernels on and a weight the kernels take (here: CPU tensors through the
    interpreter, standing in for a GPU), decode-sized batches go through tuned_linear, whose
    tuned kernel the layer output then matches (a row-parallel layer's input activation fused
    in); prefill-sized ones stay F.linear, after the activation."""
    calls = []

    def recording(x, weight, scale, bias, input_act=None):
        calls.append((x.shape[0], input_act))
        assert scale is None
        return tuned_linear(x, weight, scale, bias, input_act=input_act)

    monkeypatch.setattr(quant, "use_fused_kernels", lambda x: True)
    monkeypatch.setattr(quant, "kernel_applies", lambda x, w: w.dtype == x.dtype)
    monkeypatch.setattr(quant, "tuned_linear", recording)
    monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: True)
    monkeypatch.setattr(tuned_gemm, "_TUNED", {})
    monkeypatch.setattr(tuned_gemm, "_tune", lambda x2, *a: (DOT[1] if x2.shape[0] > 1 else INTERP_GEMV[0], {}))
    column, row, head = _layers(torch.float16)
    for tokens in (1, 3, DECODE_MAX_TOKENS + 1):
        x = torch.randn(tokens, 96).half()
        gate_up = torch.randn(tokens, 2 * 96).mul(2).half()
        with torch.no_grad():
            outs = [(column(x), F.linear(x.float(), column.weight.float(), column.bias.float())),
                    (row(x), F.linear(x.float(), row.weight.float())),
                    (head.compute_logits(x), F.linear(x.float(), head.weight.float())),
                    (row(gate_up, input_act="silu_and_mul"),
                     F.linear(input_act_reference(gate_up, "silu_and_mul").float(), row.weight.float()))]
        for out, ref in outs:
            assert (out.float() - ref).norm() / ref.norm() < TOL[torch.float16]
    # 65 rows: prefill, F.linear
    assert calls == [(m, act) for m in (1, 3) for act in (None, None, None, "silu_and_mul")]
