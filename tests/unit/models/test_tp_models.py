"""Tensor parallelism at the model level: 2 and 4 gloo ranks give the TP=1 logits.

Each rank builds the model for its rank and loads only its slices from the same checkpoint;
logits are gathered to every rank. Cases cover a tied vocab-parallel head (OPT, BLOOM), kv heads
replicated across ranks (num_kv_heads < tp) and a vocabulary not divisible by tp (padding).
"""

from __future__ import annotations

import pytest
import torch

from helpers.forward import prefill_logits
from helpers.tp import run_tp
from shardserve.models import load_model
from shardserve.models.config import ModelConfig

PROMPTS = [[1, 17, 301, 45, 260, 99, 7, 411, 23], [1, 480, 3], [1, *range(40, 500, 37)]]

CASES = [
    ("opt", {}),
    ("bloom", {}),
    ("llama", {}),  # 2 kv heads: one per rank at tp=2, each replicated on 2 ranks at tp=4
    ("llama", {"num_key_value_heads": 1, "vocab_size": 513}),  # 513 = 1 mod 2 and mod 4
    ("qwen2", {"tie_word_embeddings": True, "vocab_size": 513}),
]


def _load(path: str) -> torch.nn.Module:
    return load_model(ModelConfig.from_hf(path), path, torch.float32, "cpu")


def _rank_logits(paths: list[str]) -> list[tuple[list[torch.Tensor], int]]:
    """On one rank: per checkpoint, (logits of every prompt, parameter elements held here)."""
    out = []
    for path in paths:
        model = _load(path)
        held = sum(p.numel() for p in model.parameters())
        out.append(([*prefill_logits(model, PROMPTS, chunks=1), *prefill_logits(model, PROMPTS, chunks=2)], held))
    return out


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint):
    return [str(tiny_checkpoint(arch, **overrides)) for arch, overrides in CASES]


@pytest.fixture(scope="module")
def single_rank(checkpoints):
    return _rank_logits(checkpoints)


@pytest.mark.parametrize("world_size", [2, 4])
def test_tp_logits_equal_single_rank(checkpoints, single_rank, world_size):
    expected = single_rank
    per_rank = run_tp(world_size, _rank_logits, checkpoints)
    for rank, results in enumerate(per_rank):
        for (arch, overrides), (logits, held), (want, full) in zip(CASES, results, expected, strict=True):
            # A rank holds its slices only (plus replicated norms, biases and positions).
            assert held < 0.75 * full, (arch, rank)
            for got, ref in zip(logits, want, strict=True):
                rel = (got - ref).abs().max() / ref.abs().max()
                assert rel <= 1e-5, f"{arch} {overrides} rank {rank}/{world_size}: rel err {rel:.2e}"
