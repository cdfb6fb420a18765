"""Input activations (kernels/act_and_mul.py) on random inputs, shared by the interpreter tests
(tests/unit/kernels, tests/unit/quant) and tests/gpu: the activation kernel against torch on
every value of a half-precision dtype, and matmuls that take their input activation against the
same config fed the activation computed on its own (bit for bit) and against float32 sums."""

from __future__ import annotations

import torch

from helpers.quant_cases import make_case, relative_error
from shardserve.kernels.act_and_mul import (
    act_kernel,
    apply_input_act,
    input_act_reference,
    split_input_act,
)
from shardserve.kernels.tuned_gemm import chosen_config, tuned_linear
from shardserve.kernels.weight_formats import linear_reference

ACTS = ("silu_and_mul", "relu", "gelu", "gelu_tanh")


def check_act_kernel_on_every_value(act: str, dtype: torch.dtype, device) -> None:
    """act_kernel over every finite value of `dtype` against the torch reference: relu exactly;
    silu and the GELUs use other float32 formulas (exp / erf / tanh) than torch, so within 3 ulps
    of the dtype (GELU's negative tail, where torch's 1 + erf / 1 + tanh cancels) and 2^-20 near 0."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[torch.isfinite(x)]
    x = x[: x.numel() // 256 * 256].view(-1, 256).to(device)
    out, ref = act_kernel(x, act), input_act_reference(x, act)
    if act == "relu":
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, rtol=4 * torch.finfo(dtype).eps, atol=2**-20, msg=act)


def make_act_case(m: int, n: int, k: int, qdtype, dtype, device, input_act: str, seed: int = 0,
                  bias: bool = True, strided: bool = False):
    """(x, weight, scale, bias) as quant_cases.make_case, x [m, k] or, gated, [m, 2k] = [gate | up]
    with values of a few units (where the activations bend), a strided view if asked."""
    _, w, scale, b = make_case(m, n, k, qdtype, dtype, device, bias=bias, seed=seed)
    width = 2 * k if split_input_act(input_act)[1] else k
    x = torch.randn(m, 2 * width if strided else width, generator=torch.Generator().manual_seed(seed + 1)) * 2
    return x[:, :width].to(device, dtype), w, scale, b


def check_fused_act(m, n, k, qdtype, dtype, device, config, input_act: str, tol: float, **kw) -> float:
    """tuned_linear(x, ..., input_act) by `config` (None: the tuned choice) is bit for bit the same
    config on the activation computed on its own (by act_kernel, whose float32 code the kernels'
    prologue shares; "cublas" / "dequant": by apply_input_act, which they run first), and within
    `tol` of float32 sums over the torch activation. Except a K split on a GPU, whose float32
    partials are added atomically in whatever order programs finish, so that the same config
    does not repeat itself bit for bit: there the two agree within the output's rounding."""
    x, w, scale, b = make_act_case(m, n, k, qdtype, dtype, device, input_act, **kw)
    cfg = config or chosen_config(x, w, scale, b, input_act)
    fused = tuned_linear(x, w, scale, b, config=cfg, input_act=input_act)
    own_step = apply_input_act if cfg.kernel in ("cublas", "dequant") else act_kernel
    unfused = tuned_linear(own_step(x, input_act), w, scale, b, config=cfg)
    case = (m, n, k, qdtype, dtype, str(cfg), input_act)
    assert fused.shape == (m, n) and fused.dtype == dtype
    if cfg.split_k == 1 or not fused.is_cuda:
        assert torch.equal(fused, unfused), f"{case}: fused != unfused"
    else:
        assert relative_error(fused, unfused) < tol, f"{case}: fused far from unfused"
    ref = linear_reference(input_act_reference(x, input_act).float(), w, scale, None if b is None else b.float())
    err = relative_error(fused, ref)
    assert err < tol, f"{case}: relative error {err:.2e} >= {tol:.0e}"
    return err
