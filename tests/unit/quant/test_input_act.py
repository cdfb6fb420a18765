"""Matmuls that take their input activation (kernels/act_and_mul.py): every path of tuned_linear
with each activation, 16-bit / int8 / fp8 weights and K split or not, in Triton's CPU interpreter
(bit for bit the same config fed the activation computed on its own, and near float32 sums); the
tuner's key and timing with an activation; the layers' plumbing. tests/gpu runs them compiled.

Small odd shapes and float16 keep the interpreter quick (its bfloat16 tl.dot is wrong).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers.act_gemm_cases import ACTS, check_fused_act, make_act_case
from helpers.markers import needs_interpreter
from shardserve.kernels import tuned_gemm
from shardserve.kernels.act_and_mul import act_kernel, input_act_reference
from shardserve.kernels.gemm_kernels import CUBLAS, DEQUANT, KernelConfig
from shardserve.kernels.tuned_gemm import candidates
from shardserve.layers import quant
from shardserve.layers.linear import RowParallelLinear

pytest.importorskip("triton")
pytestmark = needs_interpreter
M, N, K = 3, 24, 40  # a masked row tile, two output tiles, a short last K tile
QDTYPES = [pytest.param(None, id="16bit"), pytest.param(torch.int8, id="int8"),
           pytest.param(torch.float8_e4m3fn, id="fp8")]
KERNELS = [
    KernelConfig(4, 16, 32, 1, kernel="gemv"),
    KernelConfig(4, 16, 32, 3, kernel="gemv"),  # ragged split: the third has no K left
    KernelConfig(16, 16, 32, 1),
    KernelConfig(16, 16, 32, 2),
]


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_every_path_fuses_the_activation_bit_for_bit(act, qdtype):
    for config in [*KERNELS, CUBLAS if qdtype is None else DEQUANT]:
        check_fused_act(M, N, K, qdtype, torch.float16, "cpu", config, act, tol=1.5e-3, bias=qdtype is None)


def test_gated_rows_read_through_a_strided_view():
    check_fused_act(M, N, K, torch.int8, torch.float16, "cpu", KERNELS[1], "silu_and_mul", tol=1.5e-3, strided=True)


@pytest.mark.parametrize("act", ["silu_and_mul", "gelu_tanh"])
def test_activation_apart_is_a_candidate_with_the_same_bits(act):
    """fuse_act=False (act_kernel, then the plain kernel) computes what the fused config does, so
    the tuner may take either; every kernel candidate comes both ways, cuBLAS once."""
    for config in (KERNELS[0], KERNELS[3]):
        check_fused_act(M, N, K, torch.int8, torch.float16, "cpu", replace(config, fuse_act=False), act, tol=1.5e-3)
    for weight_dtype in (torch.int8, torch.float16):
        plain = candidates(1, 4096, 14336, 132, weight_dtype)
        kernels = [c for c in plain if c.kernel in ("dot", "gemv")]
        assert candidates(1, 4096, 14336, 132, weight_dtype, act) == plain + [replace(c, fuse_act=False) for c in kernels]


def _fake_timer(times: dict, seen: list):
    """timer(fn, weight) -> times[config], running fn once and noting the activation it times."""
    def timer(fn, weight):
        fn(weight=weight)
        seen.append(fn.keywords["input_act"])
        return times[fn.args[0]]
    return timer


def test_tuner_times_with_the_activation_and_rejects_a_config_that_drops_it(monkeypatch):
    x, w, _, b = make_act_case(M, N, K, None, torch.float16, "cpu", "silu_and_mul")
    real_run = tuned_gemm.run_config

    def run(cfg, x2, weight, scale, bias, input_act=None):
        if cfg == KERNELS[0]:  # a kernel that multiplies the gate and ignores the activation
            return real_run(cfg, x2[:, :K].contiguous(), weight, scale, bias)
        return real_run(cfg, x2, weight, scale, bias, input_act)

    monkeypatch.setattr(tuned_gemm, "run_config", run)
    seen = []
    times = {CUBLAS: 10.0, KERNELS[0]: 1.0, KERNELS[2]: 5.0}
    cfg, timed = tuned_gemm._tune(x, w, None, b, list(times), _fake_timer(times, seen), "silu_and_mul")
    assert cfg == KERNELS[2] and set(timed) == {CUBLAS, KERNELS[2]} and seen == ["silu_and_mul"] * 2


def test_the_activation_is_part_of_the_tuning_key(monkeypatch):
    tuned = []

    def tune(x2, weight, scale, bias, configs, timer, input_act):
        tuned.append(input_act)
        return KERNELS[0], {}

    monkeypatch.setattr(tuned_gemm, "_TUNED", {})
    monkeypatch.setattr(tuned_gemm, "_tune", tune)
    monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: True)
    for act in (None, "relu", "silu_and_mul", "relu"):
        x, w, scale, _ = make_act_case(M, N, K, torch.int8, torch.float16, "cpu", act or "relu")
        tuned_gemm.chosen_config(x, w, scale, None, act)
    assert tuned == [None, "relu", "silu_and_mul"]
    assert {key[-1] for key in tuned_gemm._TUNED} == {None, "relu", "silu_and_mul"}


@pytest.mark.parametrize("quantization", [None, "int8", "fp8"])
def test_row_parallel_layer_takes_its_input_activation(quantization, monkeypatch):
    """The layer's input activation reaches the kernel (here: CPU tensors through the
    interpreter, standing in for a GPU) at decode sizes, equal to the layer fed the activation
    computed on its own; prefill sizes and the CPU path run the activation first."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # the model dtype, as models.create_model sets it
    try:
        with quant.linear_quantization(quantization):
            layer = RowParallelLinear(K, N, bias=True)
    finally:
        torch.set_default_dtype(previous)
    w = torch.randn(N, K)
    layer.weight.weight_loader(layer.weight, w.half())
    layer.bias.data.normal_()
    gate_up, prefill = torch.randn(4, 2 * K).mul(2).half(), torch.randn(65, 2 * K).mul(2).half()
    with torch.no_grad():
        cpu = layer(gate_up, input_act="silu_and_mul")  # the reference path
        assert torch.equal(cpu, layer(input_act_reference(gate_up, "silu_and_mul")))
        monkeypatch.setattr(quant, "use_fused_kernels", lambda x: True)
        monkeypatch.setattr(quant, "kernel_applies", lambda x, w: True)
        monkeypatch.setattr(tuned_gemm, "_can_tune", lambda x: True)
        monkeypatch.setattr(tuned_gemm, "_TUNED", {})
        monkeypatch.setattr(tuned_gemm, "_tune", lambda *a: (KERNELS[3], {}))
        fused = layer(gate_up, input_act="silu_and_mul")
        assert torch.equal(fused, layer(act_kernel(gate_up, "silu_and_mul")))
        assert (fused.float() - cpu.float()).norm() / cpu.float().norm() < 1.5e-3
        assert len(tuned_gemm._TUNED) == 2  # with the activation and without: two keys
        # Prefill (F.linear, or dequantise + matmul): the activation first, then the same product.
        prefill_out = layer(prefill, input_act="silu_and_mul")
        assert torch.equal(prefill_out, layer(input_act_reference(prefill, "silu_and_mul")))
