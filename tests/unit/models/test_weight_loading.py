"""Checkpoint formats load the same weights; random init is deterministic and TP-consistent."""

from __future__ import annotations

import pytest
import torch

from helpers.forward import prefill_logits
from helpers.tp import as_rank
from shardserve.models import load_model
from shardserve.models.config import ModelConfig


def _load(path, load_format="auto", dtype=torch.float32):
    return load_model(ModelConfig.from_hf(path), path, dtype, "cpu", load_format)


def _state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_sharded_and_bin_checkpoints_load_the_same_weights(tiny_checkpoint, arch):
    reference = _state(_load(tiny_checkpoint(arch)))
    _assert_same(_state(_load(tiny_checkpoint(arch, sharded=True))), reference)
    _assert_same(_state(_load(tiny_checkpoint(arch, format="bin"))), reference)
    _assert_same(_state(_load(tiny_checkpoint(arch, format="bin"), load_format="pt")), reference)
    # Nothing was left at its uninitialised value: every tensor differs from the others' init.
    assert all(t.abs().sum() > 0 for t in reference.values())


def test_random_init_is_deterministic_and_well_formed(tiny_checkpoint):
    config = ModelConfig.from_hf(tiny_checkpoint("llama"))
    a = _state(load_model(config, None, torch.float32, "cpu", "random", seed=1))
    b = _state(load_model(config, None, torch.float32, "cpu", "random", seed=1))
    c = _state(load_model(config, None, torch.float32, "cpu", "random", seed=2))
    _assert_same(a, b)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert torch.all(a["model.norm.weight"] == 1)
    qkv = a["model.layers.0.self_attn.qkv_proj.weight"]
    assert 0.015 < qkv.std() < 0.025 and torch.isfinite(qkv).all()
    model = load_model(config, None, torch.bfloat16, "cpu", "random")
    logits = prefill_logits(model, [[1, 2, 3, 4]])[0]
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("world_size", [2, 4])
def test_random_init_slices_match_single_rank(tiny_checkpoint, world_size, monkeypatch):
    """Each rank's random slice is that rank's part of the TP=1 random tensor (no collectives)."""
    from shardserve.weights import random_init

    monkeypatch.setattr(random_init, "BLOCK_ROWS", 24)  # slices straddle generator blocks
    config = ModelConfig.from_hf(tiny_checkpoint("llama", num_key_value_heads=1, vocab_size=513))
    full = _state(load_model(config, None, torch.float32, "cpu", "random"))
    ranks = []
    for rank in range(world_size):
        with as_rank(rank, world_size):
            ranks.append(_state(load_model(config, None, torch.float32, "cpu", "random")))
    # Column-parallel: rank slices stacked on dim 0; row-parallel: on dim 1.
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight"):
        assert torch.equal(torch.cat([r[name] for r in ranks], dim=1), full[name])
    gate_up = full["model.layers.0.mlp.gate_up_proj.weight"].chunk(2)
    for i, packed in enumerate(gate_up):
        assert torch.equal(torch.cat([r["model.layers.0.mlp.gate_up_proj.weight"].chunk(2)[i] for r in ranks]), packed)
    vocab = torch.cat([r["lm_head.weight"] for r in ranks])
    assert torch.equal(vocab[:513], full["lm_head.weight"]) and torch.all(vocab[513:] == 0)
    # The single kv head is replicated: every rank holds the same k rows.
    k_rows = [r["model.layers.0.self_attn.qkv_proj.weight"][64 // world_size :][:16] for r in ranks]
    assert all(torch.equal(k, full["model.layers.0.self_attn.qkv_proj.weight"][64:80]) for k in k_rows)
