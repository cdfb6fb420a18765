"""Which slice of each checkpoint tensor every rank loads (construction + weight_loader only)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers.tp import as_rank
from shardserve.kernels.weight_formats import dequantize, quantize_rows
from shardserve.layers import embedding as embedding_module
from shardserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from shardserve.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from shardserve.layers.quant import linear_quantization
from shardserve.weights.params import narrow

gen = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=gen)


def _materialized(make, world_size):
    """The layer as built by each rank, parameters allocated on CPU."""
    layers = []
    for rank in range(world_size):
        with as_rank(rank, world_size):
            layer = make()
        layer.to_empty(device="cpu")
        layers.append(layer)
    return layers


def _load(layer, name, loaded, shard_id=None):
    param = getattr(layer, name)
    param.weight_loader(param, loaded, shard_id)


def test_narrow_reads_a_safetensors_slice(tmp_path):
    full = _randn(8, 6)
    save_file({"w": full}, tmp_path / "w.safetensors")
    with safe_open(tmp_path / "w.safetensors", framework="pt") as f:
        lazy = f.get_slice("w")
        assert torch.equal(narrow(lazy, 0, 2, 3), full[2:5])
        assert torch.equal(narrow(lazy, 1, 4, 2), full[:, 4:6])


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_column_and_row_slices_reassemble(world_size):
    weight, bias = _randn(16, 8), _randn(16)
    cols = _materialized(lambda: ColumnParallelLinear(8, 16, bias=True), world_size)
    rows = _materialized(lambda: RowParallelLinear(16, 8, bias=True), world_size)
    for col, row in zip(cols, rows, strict=True):
        _load(col, "weight", weight)
        _load(col, "bias", bias)
        _load(row, "weight", weight.T.contiguous())
        _load(row, "bias", bias[:8])
    assert torch.equal(torch.cat([c.weight for c in cols]), weight)
    assert torch.equal(torch.cat([c.bias for c in cols]), bias)
    assert torch.equal(torch.cat([r.weight for r in rows], dim=1), weight.T)
    assert all(torch.equal(r.bias, bias[:8]) for r in rows)  # replicated; rank 0 adds it before the reduce


def test_merged_column_packs_each_ranks_gate_and_up():
    gate, up = _randn(12, 8), _randn(12, 8)
    ranks = _materialized(lambda: MergedColumnParallelLinear(8, [12, 12], bias=False), 2)
    for layer in ranks:
        _load(layer, "weight", gate, 0)
        _load(layer, "weight", up, 1)
    for rank, layer in enumerate(ranks):
        local_gate, local_up = layer.weight.chunk(2)
        assert torch.equal(local_gate, gate[rank * 6 : rank * 6 + 6])
        assert torch.equal(local_up, up[rank * 6 : rank * 6 + 6])


@pytest.mark.parametrize(("num_kv_heads", "world_size"), [(4, 2), (2, 4), (1, 4), (2, 2)])
def test_qkv_gqa_slices(num_kv_heads, world_size):
    heads, head_dim, hidden = 8, 4, 16
    q, k, v = _randn(heads * head_dim, hidden), _randn(num_kv_heads * head_dim, hidden), _randn(num_kv_heads * head_dim, hidden)
    bias = {"q": _randn(heads * head_dim), "k": _randn(num_kv_heads * head_dim), "v": _randn(num_kv_heads * head_dim)}
    ranks = _materialized(lambda: QKVParallelLinear(hidden, head_dim, heads, num_kv_heads, bias=True), world_size)
    for layer in ranks:
        for shard_id, tensor in zip("qkv", (q, k, v), strict=True):
            _load(layer, "weight", tensor, shard_id)
            _load(layer, "bias", bias[shard_id], shard_id)
    def rows_of(layer, tensor):  # [q | k | v] rows of this rank's packed weight or bias
        return tensor.split([layer.q_size, layer.kv_size, layer.kv_size])

    kv_local = max(num_kv_heads // world_size, 1)
    assert torch.equal(torch.cat([rows_of(r, r.weight)[0] for r in ranks]), q)
    for rank, layer in enumerate(ranks):
        local_q, local_k, local_v = rows_of(layer, layer.weight)
        assert local_q.shape[0] == heads // world_size * head_dim
        # The kv heads this rank's q heads attend with (HF's repeat_kv grouping).
        first_kv = rank * (heads // world_size) // (heads // num_kv_heads)
        rows = slice(first_kv * head_dim, (first_kv + kv_local) * head_dim)
        assert torch.equal(local_k, k[rows]) and torch.equal(local_v, v[rows])
        assert torch.equal(rows_of(layer, layer.bias)[1], bias["k"][rows])


def test_qkv_rejects_incompatible_head_counts():
    with as_rank(0, 2), pytest.raises(ValueError, match=r"num_key_value_heads \(3\).*tensor_parallel_size \(2\)"):
        QKVParallelLinear(16, 4, 6, 3, bias=False)
    with as_rank(0, 4), pytest.raises(ValueError, match=r"num_attention_heads \(6\).*tensor_parallel_size \(4\)"):
        QKVParallelLinear(16, 4, 6, 2, bias=False)


@pytest.mark.parametrize("world_size", [2, 4])
def test_vocab_embedding_pads_and_masks(world_size, monkeypatch):
    vocab, dim = 13, 6  # 13 rows: not divisible by 2 or 4
    table = _randn(vocab, dim)
    ranks = _materialized(lambda: VocabParallelEmbedding(vocab, dim), world_size)
    for layer in ranks:
        _load(layer, "weight", table)
    padded = torch.cat([layer.weight for layer in ranks])
    assert torch.equal(padded[:vocab], table) and torch.all(padded[vocab:] == 0)
    # Sum of every rank's masked lookup (what the all-reduce computes) = the full lookup.
    monkeypatch.setattr(embedding_module, "all_reduce", lambda x: x)
    ids = torch.tensor([0, 12, 5, 3, 12, 7])
    assert torch.allclose(sum(layer(ids) for layer in ranks), table[ids])


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
@pytest.mark.parametrize("world_size", [1, 4])
def test_untied_lm_head_is_quantised_per_rank_with_zero_padding(world_size, quantization):
    """The vocab split of the embedding, each rank's rows quantised as quantize_rows does, its
    padding rows zero; the ranks' logit columns (what compute_logits all-gathers) are the
    dequantised table's. An embedding built in the same scope stays in the model dtype."""
    vocab, dim = 13, 6  # 4 ranks: 4 rows each, the last with 3 of padding
    table = _randn(vocab, dim)

    def make():
        with linear_quantization(quantization):
            return ParallelLMHead(vocab, dim), VocabParallelEmbedding(vocab, dim)

    heads, embeddings = [], []
    for rank in range(world_size):
        with as_rank(rank, world_size):
            head, embedding = make()
        for layer, built in ((head, heads), (embedding, embeddings)):
            layer.to_empty(device="cpu")
            _load(layer, "weight", table)
            built.append(layer)
    q, scale = torch.cat([h.weight for h in heads]), torch.cat([h.weight_scale for h in heads])
    want_q, want_scale = quantize_rows(table, q.dtype)
    assert q.dtype in (torch.int8, torch.float8_e4m3fn) and len(q) == world_size * -(-vocab // world_size)
    assert torch.equal(q[:vocab].view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale[:vocab], want_scale)
    assert torch.all(q[vocab:].view(torch.uint8) == 0) and torch.all(torch.isfinite(scale))
    assert all(e.weight.dtype == torch.float32 for e in embeddings)
    hidden = _randn(3, dim)
    logits = torch.cat([h.quant_method.apply(h, hidden, None) for h in heads], dim=-1)[:, :vocab]
    assert torch.allclose(logits, hidden @ dequantize(want_q, want_scale, torch.float32).T, atol=1e-6)
    if world_size == 1:
        assert torch.equal(heads[0].compute_logits(hidden), logits)
