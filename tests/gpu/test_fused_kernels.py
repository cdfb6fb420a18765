"""RMSNorm, LayerNorm, rotary and SiLU-mul Triton kernels, the fused residual add + norm
kernels and the rotary fused into the KV-cache write, vs the layers' torch code (and the unfused
kernels) on random inputs; the input activations' Triton code on every half-precision value;
greedy sampling's argmax against torch's."""

from __future__ import annotations

import pytest
import torch

from helpers.act_gemm_cases import check_act_kernel_on_every_value
from helpers.argmax_cases import check_argmax
from helpers.fused_cases import FUSED_CHECKS
from helpers.fused_norm_cases import FUSED_ADD_NORM_CHECKS
from helpers.rotary_kv_cases import (
    ROTARY_KV_CASES,
    check_rotary_kv_write,
    make_rotary_kv_inputs,
    split_qkv,
)

DTYPES = pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)], ids=["fp32", "fp16", "bf16"]
)


@DTYPES
@pytest.mark.parametrize("name", sorted(FUSED_CHECKS))
def test_fused_kernel_matches_layer(name, dtype, tol):
    torch.manual_seed(hash(name) % 1000)
    FUSED_CHECKS[name]("cuda", dtype, tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "gelu_tanh"])
def test_input_activation_matches_torch_on_every_value(act, dtype):
    """act_tile (the decode GEMMs' prologue, through act_kernel) vs torch's CUDA activation."""
    check_act_kernel_on_every_value(act, dtype, "cuda")


# Odd sizes for the masked tail, and the hidden sizes of Llama-3-8B (4096), OPT-30B (7168) and
# Llama-70B (8192) at decode (1 row) and prefill (300 rows) batch sizes.
@DTYPES
@pytest.mark.parametrize("rows,dim", [(7, 1000), (3, 33), (1, 4096), (300, 4096), (4, 7168), (2, 8192)])
@pytest.mark.parametrize("name", sorted(FUSED_ADD_NORM_CHECKS))
def test_fused_add_norm_matches_layer(name, rows, dim, dtype, tol):
    # Also checks: new residual == x + residual and output == the unfused kernel's, bit for bit.
    torch.manual_seed(rows * dim)
    FUSED_ADD_NORM_CHECKS[name]("cuda", dtype, tol, rows=rows, dim=dim)


# --- rotary fused into the KV-cache write (triton attention backend, Llama family) -------------
# Llama-3-8B's attention shape at TP 1 (32 heads, 8 KV heads, head_dim 128), decode and prefill.
ROTARY_KV_GPU_CASES = ROTARY_KV_CASES + [
    ("llama3-8b-decode", dict(head_dim=128, num_heads=32, num_kv_heads=8, num_tokens=1, padding=())),
    ("llama3-8b-bucket", dict(head_dim=128, num_heads=32, num_kv_heads=8, num_tokens=8, padding=(5, 6, 7))),
    ("llama3-8b-prefill", dict(head_dim=128, num_heads=32, num_kv_heads=8, num_tokens=300, padding=(299,))),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name,kwargs", ROTARY_KV_GPU_CASES, ids=[c[0] for c in ROTARY_KV_GPU_CASES])
def test_fused_rotary_kv_write_is_bit_identical(name, kwargs, dtype):
    """q, k cache and v cache equal rotary_inplace + write_kv_cache_triton's bit for bit."""
    check_rotary_kv_write("cuda", dtype, **kwargs)


def test_fused_rotary_kv_write_replays_in_cuda_graph():
    """Positions and slots are read on the device: a graph captured once gives, after new values
    are copied into its static inputs, what an eager launch gives on those values."""
    from shardserve.kernels.kv_cache_write import rotary_write_kv_cache_triton

    dims = dict(head_dim=128, num_heads=32, num_kv_heads=8, num_tokens=4, padding=(3,))
    shape = (dims["num_heads"], dims["num_kv_heads"], dims["head_dim"])
    qkv, positions, slots, k_cache, v_cache, rope = make_rotary_kv_inputs(**dims, device="cuda", dtype=torch.bfloat16)
    static_qkv, static_pos, static_slots = qkv.clone(), positions.clone(), slots.clone()
    kc, vc = k_cache.clone(), v_cache.clone()

    def step():
        q, k, v = split_qkv(static_qkv, *shape)
        rotary_write_kv_cache_triton(static_pos, q, k, v, kc, vc, static_slots, rope.cos_cache, rope.sin_cache)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for seed in (1, 2):
        new_qkv, new_pos, new_slots, *_ = make_rotary_kv_inputs(**dims, device="cuda", dtype=torch.bfloat16, seed=seed)
        static_qkv.copy_(new_qkv)
        static_pos.copy_(new_pos)
        static_slots.copy_(new_slots)
        kc.copy_(k_cache)
        vc.copy_(v_cache)
        graph.replay()
        ref_qkv, ref_kc, ref_vc = new_qkv.clone(), k_cache.clone(), v_cache.clone()
        q, k, v = split_qkv(ref_qkv, *shape)
        rotary_write_kv_cache_triton(new_pos, q, k, v, ref_kc, ref_vc, new_slots, rope.cos_cache, rope.sin_cache)
        torch.cuda.synchronize()
        assert torch.equal(static_qkv, ref_qkv) and torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc)
        assert not torch.equal(kc, k_cache)


def test_argmax_matches_torch():
    check_argmax("cuda")
