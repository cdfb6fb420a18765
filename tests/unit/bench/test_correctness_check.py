"""The benchmark's correctness rule for half precision: ours no further from float32 than
transformers' own half-precision run is (bench/latency.judge_against_fp32)."""

from __future__ import annotations

import torch

from shardserve.bench.latency import judge_against_fp32


def _noisy(base: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return base + scale * torch.randn(base.shape, generator=g)


def test_passes_only_when_no_further_from_fp32_than_transformers_half():
    fp32 = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    half = _noisy(fp32, 0.05, 1)
    nearer, further = _noisy(fp32, 0.04, 2), _noisy(fp32, 0.06, 3)
    assert judge_against_fp32(nearer, half, fp32, passed=False)["passed"]
    judged = judge_against_fp32(further, half, fp32, passed=False)
    assert not judged["passed"], judged
    # Just further (a cosine gap well under 1e-3) still fails: no slack beyond the statement.
    assert 0 < judged["hf_min_cosine_vs_fp32"] - judged["min_cosine_vs_fp32"] < 1e-3
    assert judge_against_fp32(further, half, fp32, passed=True)["passed"]  # the plain check passed


def test_nan_logits_fail():
    fp32 = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    ours = fp32.clone()
    ours[2, 5] = float("nan")
    assert not judge_against_fp32(ours, _noisy(fp32, 0.05, 1), fp32, passed=False)["passed"]
    assert not judge_against_fp32(fp32, ours, fp32, passed=False)["passed"]
