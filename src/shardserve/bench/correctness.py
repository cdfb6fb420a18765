"""The benchmark's correctness check: our engine against transformers on the same weights.

transformers (the Accelerate baseline) gives the reference: greedy tokens for one prompt and the
per-position logits of prompt + those tokens (also in float32 where the run is half precision).
Our engine's logits on the same sequence are compared per position (cosine, argmax), and its
greedy tokens against the reference's. Random weights make near ties common, so where the
greedy tokens part, the report says how close transformers' own logits put the two tokens.
"""

from __future__ import annotations

import torch


def take_reference(baseline, prompt: list[int], n: int) -> dict:
    tokens = baseline.generate([prompt], n)[0]
    seq = prompt + tokens
    reference = {"prompt": prompt, "tokens": tokens, "logits": baseline.logits(seq)}
    if baseline.dtype != torch.float32:
        reference["logits_fp32"] = baseline.logits_fp32(seq)
    return reference


def check_engine(llm, reference: dict) -> dict:
    """Our per-position logits on the reference sequence, and our greedy tokens, vs transformers."""
    from shardserve import SamplingParams
    from shardserve.engine.request import Request

    prompt, ref_tokens = reference["prompt"], reference["tokens"]
    seq = prompt + ref_tokens
    request = Request("bench-check", seq, SamplingParams())
    block_manager = llm.scheduler.block_manager
    assert block_manager.allocate(request, len(seq)), "no KV blocks for the check"
    try:
        ours = llm.executor.call("prompt_logits", seq, request.block_ids)
    finally:
        block_manager.free(request)
    summary = compare_logits(ours, reference["logits"])
    if "logits_fp32" in reference:
        summary |= judge_against_fp32(ours, reference["logits"], reference["logits_fp32"], summary["passed"])
    n = len(ref_tokens)
    params = SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0.0)
    greedy = llm.generate([prompt], params)[0].token_ids
    divergence = greedy_divergence(greedy, reference)
    return summary | {"greedy_agree": divergence.get("at", n), "greedy_of": n, "greedy_divergence": divergence}


def greedy_divergence(greedy: list[int], reference: dict) -> dict:
    """Where our greedy tokens first differ from the reference's ({} where they never do), and
    how far apart transformers put the two tokens in that same context: `margin`, its token's
    logit minus ours in its own (run-precision) logits; with float32 logits also `margin_fp32`
    and `half_error`, the largest difference between its half-precision and float32 logits at
    that position. A margin within that error is a tie that half precision may break either way."""
    tokens = reference["tokens"]
    at = next((i for i, (a, b) in enumerate(zip(greedy, tokens, strict=True)) if a != b), None)
    if at is None:
        return {}
    position = len(reference["prompt"]) - 1 + at  # the logits that chose token `at`
    theirs, ours = tokens[at], greedy[at]
    logits = reference["logits"][position].double()
    out = {"at": at, "margin": float(logits[theirs] - logits[ours])}
    if "logits_fp32" in reference:
        fp32 = reference["logits_fp32"][position].double()
        out |= {"margin_fp32": float(fp32[theirs] - fp32[ours]), "half_error": float((logits - fp32).abs().max())}
    return out


def compare_logits(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """Cosine per position (float64) and argmax agreement of two [T, vocab] logit tensors."""
    ours, ref = ours.double(), ref.double()
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "argmax_agree": float((ours.argmax(-1) == ref.argmax(-1)).double().mean()),
        "positions": int(ours.shape[0]),
        "passed": bool(cos.min() >= 0.999),
    }


def judge_against_fp32(ours: torch.Tensor, half: torch.Tensor, fp32: torch.Tensor, passed: bool) -> dict:
    """Half precision alone moves logits: judge ours against transformers' float32 logits next to
    transformers' own half-precision ones, and pass (besides `passed`, the plain check) when ours
    is no further from float32 (min cosine) than transformers' half precision is. NaN fails."""
    ours32 = compare_logits(ours, fp32)["min_cosine"]
    hf32 = compare_logits(half, fp32)["min_cosine"]
    return {"min_cosine_vs_fp32": ours32, "hf_min_cosine_vs_fp32": hf32, "passed": passed or ours32 >= hf32}


def format_check(c: dict) -> str:
    verdict = "PASS" if c["passed"] else "FAIL"
    text = (f"{verdict} min cosine {c['min_cosine']:.5f} (mean {c['mean_cosine']:.5f}) over {c['positions']} "
            f"positions, argmax agree {c['argmax_agree']:.0%}, greedy agree {c['greedy_agree']}/{c['greedy_of']}")
    d = c.get("greedy_divergence")
    if d:
        text += f" (where they part, transformers' logit margin for its token {d['margin']:.4f}"
        if "margin_fp32" in d:
            text += f", {d['margin_fp32']:.4f} in float32, its half precision off by up to {d['half_error']:.4f}"
        text += ")"
    if "min_cosine_vs_fp32" in c:
        text += (f"; vs float32 transformers: ours {c['min_cosine_vs_fp32']:.5f}, "
                 f"transformers' own half precision {c['hf_min_cosine_vs_fp32']:.5f}")
    return text
