"""Rotary embedding fused into the KV-cache write (triton attention backend), through Triton's
interpreter: the kernel against the two launches it replaces, the Attention layer's wiring, and
Llama-family models end to end (prefill and decode steps).

bfloat16 runs only in tests/gpu: the interpreter's bfloat16 casts truncate instead of rounding.
"""

from __future__ import annotations

import pytest
import torch

import shardserve.kernels.paged_decode as paged_decode
import shardserve.kernels.rotary as rotary_kernels
import shardserve.kernels.triton_attention as triton_attention_module
import shardserve.layers.attention as attention_module
import shardserve.layers.rotary as rotary_module
from helpers.markers import needs_interpreter
from helpers.rotary_kv_cases import (
    ROTARY_KV_CASES,
    check_rotary_kv_write,
    make_rotary_kv_inputs,
    split_qkv,
)
from shardserve.layers.attention import Attention
from shardserve.layers.forward_context import AttentionMetadata, forward_context

pytest.importorskip("triton")
pytestmark = needs_interpreter


@pytest.fixture(autouse=True)
def _few_decode_splits(monkeypatch):
    # The interpreter runs programs one by one: 2 decode splits, not the CPU default of 32.
    monkeypatch.setattr(paged_decode, "default_num_splits", lambda *args: 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name,kwargs", ROTARY_KV_CASES, ids=[c[0] for c in ROTARY_KV_CASES])
def test_fused_rotary_write_is_bit_identical_in_interpreter(name, kwargs, dtype):
    check_rotary_kv_write("cpu", dtype, **kwargs)


def test_fused_rotary_write_no_tokens():
    from shardserve.kernels.kv_cache_write import rotary_write_kv_cache_triton

    qkv, positions, slots, k_cache, v_cache, rope = make_rotary_kv_inputs(64, 4, 2, 0, (), "cpu", torch.float32)
    q, k, v = split_qkv(qkv, 4, 2, 64)
    before = k_cache.clone()
    rotary_write_kv_cache_triton(positions, q, k, v, k_cache, v_cache, slots, rope.cos_cache, rope.sin_cache)
    assert torch.equal(k_cache, before)


def _count(monkeypatch, module, name, counts):
    fn = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def _layer_step(num_tokens, decode: bool, dtype):
    """An Attention layer with random cache plus a step's q/k/v slices, positions, metadata."""
    head_dim, heads, kv_heads, block_size = 64, 8, 2, 16
    gen = torch.Generator().manual_seed(3)
    if decode:  # one token per sequence, contexts of several lengths; last row padding
        seq_lens = [5, 40, 17, 0][:num_tokens]
        q_lens = [1] * len(seq_lens)
    else:  # a prefill after a cached prefix and a fresh one
        q_lens, seq_lens = [num_tokens - 3, 3], [num_tokens - 3 + 20, 3]
    blocks_per_seq = 4
    tables = torch.randperm(blocks_per_seq * len(seq_lens), generator=gen).view(len(seq_lens), -1).to(torch.int32)
    positions, slots, starts = [], [], [0]
    for i, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        starts.append(starts[-1] + q_len)
        for p in range(seq_len - q_len, seq_len):
            if p < 0:  # a CUDA-graph padding row: seq_len 0, slot -1, position 0
                positions.append(0)
                slots.append(-1)
            else:
                positions.append(p)
                slots.append(int(tables[i, p // block_size]) * block_size + p % block_size)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_host=starts,
        seq_lens_host=seq_lens,
    )
    from shardserve.layers.rotary import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, 256, 10000.0, None)
    attn = Attention(heads, head_dim, head_dim**-0.5, kv_heads)
    attn.backend = "triton"
    cache_shape = (tables.numel(), block_size, kv_heads, head_dim)
    attn.kv_cache = (torch.randn(cache_shape, generator=gen).to(dtype), torch.randn(cache_shape, generator=gen).to(dtype))
    qkv = torch.randn(len(slots), (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    return attn, rope, qkv, torch.tensor(positions, dtype=torch.int64), meta


@pytest.mark.parametrize("decode", [True, False], ids=["decode", "prefill"])
def test_attention_layer_fuses_rotary_into_cache_write(decode):
    """Triton backend: one fused launch (no rotary_inplace, no separate write), and the same
    output and cache, bit for bit, as rotary_inplace + write_kv_cache_triton."""
    dtype = torch.float16
    attn, rope, qkv, positions, meta = _layer_step(4 if decode else 11, decode, dtype)
    heads_dim, kv_dim = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
    cache0 = tuple(c.clone() for c in attn.kv_cache)

    def run(fused: bool):
        counts: dict[str, int] = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(attention_module, "use_fused_kernels", lambda x: fused)
            mp.setattr(rotary_module, "use_fused_kernels", lambda x: True)  # unfused: rotary_inplace
            _count(mp, rotary_kernels, "rotary_inplace", counts)
            _count(mp, triton_attention_module, "write_kv_cache_triton", counts)
            _count(mp, triton_attention_module, "rotary_write_kv_cache_triton", counts)
            attn.kv_cache = tuple(c.clone() for c in cache0)
            q, k, v = qkv.clone().split([heads_dim, kv_dim, kv_dim], dim=-1)
            with forward_context(meta):
                out = attn(q, k, v, positions, rope)
        return out, attn.kv_cache, counts

    out_u, cache_u, counts_u = run(fused=False)
    out_f, cache_f, counts_f = run(fused=True)
    assert counts_u == {"rotary_inplace": 1, "write_kv_cache_triton": 1}
    assert counts_f == {"rotary_write_kv_cache_triton": 1}
    assert torch.equal(cache_f[0], cache_u[0]) and torch.equal(cache_f[1], cache_u[1])
    assert torch.equal(out_f, out_u)
    assert not torch.equal(cache_f[0], cache0[0])  # something was written
    if decode:  # the padding row (seq_len 0) comes out as zeros, its slot -1 is not written
        assert torch.equal(out_f[-1], torch.zeros_like(out_f[-1]))


def test_attention_layer_without_rotary_is_unchanged(monkeypatch):
    """OPT/BLOOM call Attention(q, k, v): still write_kv_cache_triton, nothing rotated."""
    attn, _, qkv, _, meta = _layer_step(4, True, torch.float32)
    monkeypatch.setattr(attention_module, "use_fused_kernels", lambda x: True)
    counts: dict[str, int] = {}
    _count(monkeypatch, triton_attention_module, "write_kv_cache_triton", counts)
    _count(monkeypatch, triton_attention_module, "rotary_write_kv_cache_triton", counts)
    hd, kvd = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
    with forward_context(meta):
        attn(*qkv.split([hd, kvd, kvd], dim=-1))
    assert counts == {"write_kv_cache_triton": 1}


def test_torch_backend_applies_rotary_module(monkeypatch):
    """The torch backend (CPU reference) runs the rotary module's torch code, then writes: the
    same numbers as rotating first and calling Attention(q, k, v)."""
    attn, rope, qkv, positions, meta = _layer_step(11, False, torch.float32)
    attn.backend = "torch"
    cache0 = tuple(c.clone() for c in attn.kv_cache)
    hd, kvd = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
    with forward_context(meta):
        out = attn(*qkv.clone().split([hd, kvd, kvd], dim=-1), positions, rope)
        cache = attn.kv_cache
        attn.kv_cache = tuple(c.clone() for c in cache0)
        q, k, v = qkv.clone().split([hd, kvd, kvd], dim=-1)
        q, k = rope(positions, q, k)
        ref = attn(q, k, v)
    assert torch.equal(out, ref)
    assert torch.equal(cache[0], attn.kv_cache[0]) and torch.equal(cache[1], attn.kv_cache[1])


# --- Llama-family models on the triton backend, end to end ------------------------------------

PROMPTS = [[1, 17, 301, 45, 260, 99, 7, 411], [1, 480, 3]]  # 2 steps: the second after a cached prefix
DECODE_PROMPTS = [[1, 17, 301, 45], [1, 480, 3, 9]]  # fed one token per step: decode-only steps


@pytest.mark.slow
def test_llama_triton_backend_fused_rotary_matches_unfused(tiny_checkpoint):
    """Prefill (chunked: a cached prefix) and decode-only steps: the fused path's logits equal
    the unfused triton path's (rotary_inplace + write) bit for bit, and transformers' within
    float32 rounding; one fused launch per layer per step."""
    from transformers import AutoModelForCausalLM

    from helpers.forward import prefill_logits
    from shardserve.models import load_model
    from shardserve.models.config import ModelConfig

    path = tiny_checkpoint("llama")  # llama3 rope scaling, GQA
    model = load_model(ModelConfig.from_hf(path), path, torch.float32, "cpu", "auto")
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.backend = "triton"
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    for prompts, chunks in ((PROMPTS, 2), (DECODE_PROMPTS, len(DECODE_PROMPTS[0]))):
        results = {}
        for fused in (False, True):
            counts: dict[str, int] = {}
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(rotary_module, "use_fused_kernels", lambda x: True)
                mp.setattr(attention_module, "use_fused_kernels", lambda x, f=fused: f)
                _count(mp, rotary_kernels, "rotary_inplace", counts)
                _count(mp, triton_attention_module, "write_kv_cache_triton", counts)
                _count(mp, triton_attention_module, "rotary_write_kv_cache_triton", counts)
                results[fused] = prefill_logits(model, prompts, chunks=chunks)
            n = chunks * len(layers)  # one launch per layer per step
            want = {"rotary_write_kv_cache_triton": n} if fused else {"rotary_inplace": n, "write_kv_cache_triton": n}
            assert counts == want, counts
        with torch.no_grad():
            expected = [hf(torch.tensor([p])).logits[0].float() for p in prompts]
        for unfused, fused_out, ref in zip(results[False], results[True], expected, strict=True):
            assert torch.equal(fused_out, unfused)
            assert (fused_out - ref).abs().max() <= 1e-4
        assert expected[0].std(-1).min() > 0.3  # not a vacuous comparison
