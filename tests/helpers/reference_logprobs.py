"""transformers' float32 forward over a prompt: the reference that prompt logprobs are held to."""

from __future__ import annotations

from functools import cache

import torch


@cache
def _model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logprobs(model_dir, ids: list[int]) -> torch.Tensor:
    """transformers' float32 log_softmax [len(ids), vocab] of one forward over `ids`."""
    mask = torch.ones(1, len(ids), dtype=torch.long)
    with torch.no_grad():
        logits = _model(str(model_dir))(torch.tensor([ids]), attention_mask=mask).logits
    return torch.log_softmax(logits[0].float(), dim=-1)


def token_logprobs(logprobs: torch.Tensor, ids: list[int]) -> list[float]:
    """Each token's logprob given the tokens before it, from the second on (the first has none)."""
    return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]
