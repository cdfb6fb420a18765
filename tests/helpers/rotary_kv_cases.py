"""The fused rotary + KV-cache write kernel vs the two launches it replaces, on random inputs.

kernels/kv_cache_write.py `rotary_write_kv_cache_triton` must leave q and both caches bit for bit
as kernels/rotary.py `rotary_inplace` followed by `write_kv_cache_triton` do. Shared by the
interpreter tests (CPU: float32 and float16; the interpreter's bfloat16 casts truncate) and
tests/gpu (compiled, bfloat16 too).
"""

from __future__ import annotations

import torch

# (head_dim, num_heads, num_kv_heads, num_tokens, padding rows): GQA groups of 4 and 3, MQA,
# MHA, head counts that are not powers of two, and padding rows (slot -1) among real ones.
ROTARY_KV_CASES = [
    ("d128-gqa4", dict(head_dim=128, num_heads=8, num_kv_heads=2, num_tokens=7, padding=(1, 6))),
    ("d64-gqa3", dict(head_dim=64, num_heads=6, num_kv_heads=2, num_tokens=9, padding=(0, 4, 8))),
    ("d64-mqa", dict(head_dim=64, num_heads=5, num_kv_heads=1, num_tokens=4, padding=())),
    ("d128-mha-1tok", dict(head_dim=128, num_heads=4, num_kv_heads=4, num_tokens=1, padding=())),
    ("d64-all-padding", dict(head_dim=64, num_heads=4, num_kv_heads=2, num_tokens=3, padding=(0, 1, 2))),
]


def make_rotary_kv_inputs(head_dim, num_heads, num_kv_heads, num_tokens, padding, device, dtype,
                          seed=0, max_positions=4096, block_size=16):
    """Returns (qkv, positions, slots, k_cache, v_cache, rope): q, k, v are strided column slices
    of qkv [T, (H + 2 KV) * D], as QKVParallelLinear.split gives them; every cache slot holds
    random values, so a write to the wrong slot (or to a padding row's) shows."""
    from shardserve.layers.rotary import RotaryEmbedding

    gen = torch.Generator().manual_seed(seed)
    num_blocks = max(6, -(-2 * num_tokens // block_size))  # half the slots stay unwritten
    rope = RotaryEmbedding(head_dim, max_positions, 10000.0, None)
    rope.init_buffers(device)
    qkv = (torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen) * 2).to(dtype)
    positions = torch.randint(0, max_positions, (num_tokens,), generator=gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[list(padding)] = -1
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=gen).to(dtype)
    v_cache = torch.randn(cache_shape, generator=gen).to(dtype)
    return (qkv.to(device), positions.to(device), slots.to(device), k_cache.to(device),
            v_cache.to(device), rope)


def split_qkv(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    """[T, heads, head_dim] views of qkv's column slices (rows strided, as in the model)."""
    t = qkv.shape[0]
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return (q.view(t, num_heads, head_dim), k.view(t, num_kv_heads, head_dim),
            v.view(t, num_kv_heads, head_dim))


def check_rotary_kv_write(device, dtype, head_dim, num_heads, num_kv_heads, num_tokens, padding,
                          seed=0) -> None:
    """Fused == rotary_inplace + write_kv_cache_triton, bit for bit (q, k cache, v cache); k and
    v themselves untouched; and within rounding of the torch reference (layers/rotary.py's torch
    path, then kernels/paged_attention.py's write_kv_cache)."""
    from shardserve.kernels import set_fused_kernels
    from shardserve.kernels.kv_cache_write import (
        rotary_write_kv_cache_triton,
        write_kv_cache_triton,
    )
    from shardserve.kernels.paged_attention import write_kv_cache
    from shardserve.kernels.rotary import rotary_inplace

    qkv, positions, slots, k_cache, v_cache, rope = make_rotary_kv_inputs(
        head_dim, num_heads, num_kv_heads, num_tokens, padding, device, dtype, seed=seed
    )
    shape = (num_heads, num_kv_heads, head_dim)

    # The two launches the fused kernel replaces.
    qkv_a, kc_a, vc_a = qkv.clone(), k_cache.clone(), v_cache.clone()
    q_a, k_a, v_a = split_qkv(qkv_a, *shape)
    rotary_inplace(positions, q_a.flatten(1), k_a.flatten(1), rope.cos_cache, rope.sin_cache)
    write_kv_cache_triton(k_a, v_a, kc_a, vc_a, slots)

    # The fused kernel.
    qkv_b, kc_b, vc_b = qkv.clone(), k_cache.clone(), v_cache.clone()
    q_b, k_b, v_b = split_qkv(qkv_b, *shape)
    out = rotary_write_kv_cache_triton(positions, q_b, k_b, v_b, kc_b, vc_b, slots, rope.cos_cache, rope.sin_cache)
    assert out.data_ptr() == q_b.data_ptr(), "q is rotated in place"

    assert torch.equal(q_b, q_a), "q differs from rotary_inplace"
    assert torch.equal(kc_b, kc_a), "k cache differs from rotary_inplace + write_kv_cache_triton"
    assert torch.equal(vc_b, vc_a), "v cache differs from write_kv_cache_triton"
    kv_cols = slice(num_heads * head_dim, None)
    assert torch.equal(qkv_b[:, kv_cols], qkv[:, kv_cols]), "k or v was modified"
    if len(padding) < num_tokens:  # not vacuous: something was written and rotated
        assert not torch.equal(kc_b, k_cache) and not torch.equal(q_b, split_qkv(qkv, *shape)[0])
    else:
        assert torch.equal(kc_b, k_cache) and torch.equal(vc_b, v_cache)

    # The torch reference (an ulp apart at most: it rounds after each product).
    set_fused_kernels(False)
    try:
        q_r, k_r, v_r = split_qkv(qkv.clone(), *shape)
        q_r2, k_r2 = rope(positions, q_r.flatten(1), k_r.flatten(1))
    finally:
        set_fused_kernels(True)
    kc_r, vc_r = k_cache.clone(), v_cache.clone()
    write_kv_cache(k_r2.view_as(k_r), v_r, kc_r, vc_r, slots)
    assert torch.equal(vc_b, vc_r)
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for got, want in ((q_b, q_r2.view_as(q_r)), (kc_b, kc_r)):
        err = float((got.double() - want.double()).norm() / want.double().norm())
        assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"
