"""The benchmark's correctness check (bench/correctness.py): the rule for half precision (ours no
further from float32 than transformers' own half-precision run is), and the report of where our
greedy tokens part from transformers'."""

from __future__ import annotations

import torch

from shardserve.bench.correctness import format_check, greedy_divergence, judge_against_fp32


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


def test_greedy_divergence_reports_transformers_margin_where_the_tokens_part():
    g = torch.Generator().manual_seed(0)
    prompt, tokens = [1, 2, 3], [5, 6, 7, 8]
    fp32 = torch.randn(len(prompt) + len(tokens), 16, generator=g)
    half = _noisy(fp32, 0.01, 1)
    half[0] += 5.0  # an error at another position: not the one that chose the parting token
    reference = {"prompt": prompt, "tokens": tokens, "logits": half, "logits_fp32": fp32}
    assert greedy_divergence(tokens, reference) == {}
    d = greedy_divergence([5, 6, 9, 8], reference)
    row = len(prompt) - 1 + 2  # the logits after prompt + tokens[:2] chose token 2
    assert d["at"] == 2
    assert d["margin"] == float(half[row, 7].double() - half[row, 9].double())
    assert d["margin_fp32"] == float(fp32[row, 7].double() - fp32[row, 9].double())
    assert d["half_error"] == float((half[row] - fp32[row]).abs().max()) < 0.1
    check = {"passed": True, "min_cosine": 1.0, "mean_cosine": 1.0, "positions": 7, "argmax_agree": 1.0,
             "greedy_agree": 2, "greedy_of": 4, "greedy_divergence": d}
    assert f"greedy agree 2/4 (where they part, transformers' logit margin for its token {d['margin']:.4f}" in format_check(check)
