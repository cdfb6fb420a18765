"""SamplingInfo rows for the sampler's tests (CPU and GPU): every field at its neutral value
unless given, `greedy` derived as the scheduler derives it."""

from __future__ import annotations

from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import SamplingInfo


def info(**kw) -> SamplingInfo:
    base = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                presence_penalty=0.0, frequency_penalty=0.0, seed=None,
                logprobs=False, top_logprobs=0, penalty_token_ids=[], suppress_token_ids=[], logit_bias=())
    base.update(kw)
    base.setdefault("has_logit_bias", bool(base["logit_bias"]))
    greedy = SamplingParams(temperature=base["temperature"], top_k=base["top_k"]).greedy
    return SamplingInfo(greedy=greedy, **base)
