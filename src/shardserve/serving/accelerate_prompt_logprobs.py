"""Prompt logprobs (SamplingParams.prompt_logprobs) for the Accelerate engine: each prompt token's
logprob given the tokens before it, and the N most likely tokens at its position, as our engine
gives them (engine/prompt_logprobs.py): float32 log_softmax of the model's raw logits.

Each request that asks gets one forward of its own prompt, unpadded, before the group's
`generate`. Unpadded, every architecture sees the positions it would see alone: a left-padded
batch needs position ids from the attention mask, which not every model takes (BLOOM's ALiBi has
none), and would hold the logits of all rows at once. One request's logits are [prompt, vocab];
log_softmax runs over ROWS_PER_SLICE positions at a time, so only one slice's float32 copy lives
beside them.
"""

from __future__ import annotations

import logging

import torch

from shardserve.engine import logprob_rows
from shardserve.engine.prompt_logprobs import ROWS_PER_SLICE
from shardserve.engine.request import Request

logger = logging.getLogger(__name__)


def fill_prompt_logprobs(model, requests: list[Request]) -> dict[str, Exception]:
    """Set request.prompt_logprobs / prompt_top_logprobs of every request that asks, for prompt
    tokens 1 .. P - 1 (the OutputProcessor puts the first token's None / [] in front). -> the
    errors of those that failed (a long prompt's logits may not fit), by request id: each fails
    alone, not its group."""
    failed = {}
    for request in requests:
        if request.params.prompt_logprobs is None:
            continue
        try:
            _fill(model, request)
        except Exception as e:  # noqa: BLE001 - any failure fails this request only
            logger.exception("prompt logprobs of %s failed", request.request_id)
            failed[request.request_id] = RuntimeError(f"prompt logprobs failed: {type(e).__name__}: {e}")
    return failed


@torch.inference_mode()
def _fill(model, request: Request) -> None:
    top, ids = request.params.prompt_logprobs, request.prompt_token_ids
    request.prompt_logprobs, request.prompt_top_logprobs = [], []
    if len(ids) < 2:  # the first token has no logprob: nothing to compute
        return
    tokens = torch.tensor([ids], dtype=torch.long, device=model.device)
    logits = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits[0]
    targets = tokens[0, 1:].to(logits.device)
    # Positions 0 .. P - 2: the last one predicts the first generated token.
    for lo in range(0, len(ids) - 1, ROWS_PER_SLICE):
        hi = min(lo + ROWS_PER_SLICE, len(ids) - 1)
        rows = logprob_rows.pack(torch.log_softmax(logits[lo:hi].float(), dim=-1), targets[lo:hi], top or 0)
        width, rows = rows.shape[1], rows.tolist()  # the layout our engine reads its rows in
        request.prompt_logprobs += [row[0] for row in rows]
        if top:
            request.prompt_top_logprobs += [logprob_rows.top_of(row, width, top) for row in rows]
