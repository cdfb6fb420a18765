"""The Accelerate engine's sampling beside transformers' generate: which requests may share one
call, and OpenAI's presence and frequency penalties and logit_bias as logits processors."""

from __future__ import annotations

import torch

from shardserve.engine.request import Request
from shardserve.engine.sampler import add_logit_bias, logit_bias_tensors


def sampling_key(request: Request):
    """Requests that may share one generate call: same sampling (greedy: no knobs) and logit_bias,
    seeded alone."""
    p = request.params
    alone = request.request_id if p.seed is not None else None
    knobs = () if p.greedy else (p.temperature, p.top_p, p.top_k, p.min_p)
    return (p.greedy, knobs, p.repetition_penalty, p.presence_penalty, p.frequency_penalty, p.logit_bias, alone)


class OutputPenalties:
    """A transformers logits processor with OpenAI's presence and frequency penalties: a token's
    logit loses `presence` if it occurs in the output (the tokens after the first `prompt_len`)
    and `frequency` per occurrence there. The definition our sampler is tested against."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.presence == 0.0 and self.frequency == 0.0:
            return scores
        out = input_ids[:, self.prompt_len :]
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.presence * (counts > 0) - self.frequency * counts


class LogitBias:
    """A transformers logits processor adding the group's logit_bias to every row, as our sampler
    does (sampling_key keeps requests with different biases in separate calls)."""

    def __init__(self, bias: tuple[tuple[int, float], ...]):
        self.bias = bias
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None  # on the scores' device, once

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.bias:
            return scores
        if self._tensors is None:
            self._tensors = logit_bias_tensors(self.bias, scores.device)
        return add_logit_bias(scores, self._tensors)
