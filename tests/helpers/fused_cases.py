"""Fused small kernels (RMSNorm, rotary, SiLU-mul) against the layers' torch paths.

The layers' torch code is the reference: with fused kernels switched off (or on a CPU tensor)
each layer runs exactly that code. Shared by the interpreter tests (CPU) and tests/gpu.
"""

from __future__ import annotations

import torch

from shardserve.kernels import set_fused_kernels


def _reference(fn):
    set_fused_kernels(False)
    try:
        return fn()
    finally:
        set_fused_kernels(True)


def check_rms_norm(device, dtype, tol: float) -> float:
    from shardserve.kernels.rms_norm import rms_norm
    from shardserve.layers.norm import RMSNorm

    norm = RMSNorm(1000, 1e-5)  # not a power of two: the masked tail matters
    norm.weight = torch.nn.Parameter(torch.randn(1000, dtype=dtype, device=device), requires_grad=False)
    x = (torch.randn(7, 2000, device=device) * 3).to(dtype)[:, 500:1500]  # strided rows
    ref = _reference(lambda: norm(x))
    return _rel(rms_norm(x, norm.weight, norm.eps), ref, tol)


def check_layer_norm(device, dtype, tol: float) -> float:
    from shardserve.kernels.layer_norm import layer_norm
    from shardserve.layers.norm import LayerNorm

    norm = LayerNorm(1000, 1e-5)
    for name in ("weight", "bias"):
        setattr(norm, name, torch.nn.Parameter(torch.randn(1000, dtype=dtype, device=device), requires_grad=False))
    x = (torch.randn(7, 2000, device=device) * 3 + 1).to(dtype)[:, 500:1500]  # strided rows, mean != 0
    ref = _reference(lambda: norm(x))
    return _rel(layer_norm(x, norm.weight, norm.bias, norm.eps), ref, tol)


def check_rotary(device, dtype, tol: float) -> float:
    from shardserve.kernels.rotary import rotary_inplace
    from shardserve.layers.rotary import RotaryEmbedding

    head_dim, heads, kv_heads, tokens = 64, 6, 2, 9
    rope = RotaryEmbedding(head_dim, 512, 10000.0, None)
    rope.init_buffers(device)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=device).to(dtype)
    q, k, _ = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    positions = torch.randint(0, 512, (tokens,), device=device)
    ref_q, ref_k = _reference(lambda: rope(positions, q.clone(), k.clone()))
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    out_q, out_k = rotary_inplace(positions, q, k, rope.cos_cache, rope.sin_cache)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before), "v was touched"
    return max(_rel(out_q, ref_q, tol), _rel(out_k, ref_k, tol))


def check_silu_and_mul(device, dtype, tol: float) -> float:
    from shardserve.kernels.act_and_mul import input_act_reference, silu_and_mul

    x = (torch.randn(5, 2 * 1500, device=device) * 4).to(dtype)
    ref = _reference(lambda: input_act_reference(x, "silu_and_mul"))
    return _rel(silu_and_mul(x), ref, tol)


FUSED_CHECKS = {"rms_norm": check_rms_norm, "layer_norm": check_layer_norm, "rotary": check_rotary, "silu_and_mul": check_silu_and_mul}


def _rel(out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, ref.shape, out.dtype, ref.dtype)
    assert torch.isfinite(out).all()
    err = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"
    return err
