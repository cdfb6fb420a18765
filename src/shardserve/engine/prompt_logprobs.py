"""Prompt logprobs (SamplingParams.prompt_logprobs): each prompt token's logprob given the tokens
before it, and the N most likely tokens at its position, for evaluation harnesses (OpenAI
completions with echo and logprobs).

The row at prompt position p predicts token p + 1, so positions 0 .. P - 2 of a P-token prompt
have rows; the prompt's last position is the sampling row of the first generated token. The
scheduler hands each step the rows of its prompt chunks (`rows_to_compute`), each position once,
even when a preempted request computes its prompt again, and limits its prefix-cache hits
(`cacheable_tokens`) to positions whose rows were given; every rank computes their logits in the
eager forward (`launch`: compute_logits is a collective under tensor parallelism) and rank 0
copies their logprobs to host memory, read with the step's sampled tokens (`StepResult`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from shardserve.engine import logprob_rows
from shardserve.engine.request import Request

if TYPE_CHECKING:
    from shardserve.engine.scheduler import ScheduledSeq

# Logits are [rows, vocab] float32 on every rank, and log_softmax makes a second such tensor: at
# a 152k vocabulary, 256 rows take 2 x 156 MB, well inside the step's activation budget
# (engine/kv_budget.py counts a vocabulary of float32 per step token).
ROWS_PER_SLICE = 256

# One sequence's rows of a step, in position order: (logprob of each next prompt token, and per
# row its N most likely (token id, logprob), most likely first, or None when N is 0).
PromptLogprobs = tuple[list[float], list[list[tuple[int, float]]] | None]


@dataclass
class PromptLogprobRows:
    """The rows of a scheduled prompt chunk whose logprobs the request asks for: row
    token_ids[first + k] of the ScheduledSeq predicts target_ids[k], the next prompt token."""

    first: int
    target_ids: list[int]
    top: int  # SamplingParams.prompt_logprobs: also the `top` most likely tokens of each row


@dataclass
class StepResult:
    """What rank 0 reads back from a step. Here, not in engine/pending_step.py: the engine process
    unpickles it from rank 0 and need not import the sampler's kernels for that."""

    sampled: dict = field(default_factory=dict)  # engine/pending_step.SampledTokens
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)  # by request id


def rows_to_compute(request: Request, start: int, end: int) -> PromptLogprobRows | None:
    """The prompt-logprob rows among positions [start, end) that a step computes for `request`
    (None: none, or it asks for no prompt logprobs); marks them as given to a step."""
    top = request.params.prompt_logprobs
    if top is None:  # most requests, every step: nothing more to look at
        return None
    # Rows of positions already given to a step are not computed again (a preempted request): the
    # host appends each step's rows in order, so every position must come exactly once.
    lo = max(start, request.num_prompt_logprob_rows)
    hi = min(end, len(request.prompt_token_ids) - 1)
    if lo >= hi:
        return None
    request.num_prompt_logprob_rows = hi
    return PromptLogprobRows(lo - start, request.prompt_token_ids[lo + 1 : hi + 1], top)


def cacheable_tokens(request: Request) -> int:
    """How many of the request's first tokens it may take from the prefix cache. A cached token
    gets no logits, so until a step has been given every prompt-logprob row of a request that asks
    for them, only positions whose rows are given: none at first, more when it is computed again
    after a preemption (`rows_to_compute` gives each row once)."""
    wants_rows = request.params.prompt_logprobs is not None  # checked first: most requests do not
    if wants_rows and request.num_prompt_logprob_rows < len(request.prompt_token_ids) - 1:
        return request.num_prompt_logprob_rows
    return request.num_known_tokens


class PendingPromptLogprobs:
    """A step's prompt logprobs on their way to host memory (rank 0), read with its tokens."""

    def __init__(self, layout: list[tuple[str, int, int]], values: torch.Tensor):
        self._layout = layout  # (request id, rows, top) per sequence, in row order
        self._event = None
        self._values = values
        if values.device.type == "cuda":  # pinned: the copy does not wait for the GPU
            self._values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._values.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> dict[str, PromptLogprobs]:
        if self._event is not None:
            self._event.synchronize()
        rows, width = self._values.tolist(), self._values.shape[1]
        out, at = {}, 0
        for request_id, n, top in self._layout:
            mine, at = rows[at : at + n], at + n
            tops = [logprob_rows.top_of(r, width, top) for r in mine] if top else None
            out[request_id] = ([r[0] for r in mine], tops)
        return out


def launch(
    model, hidden: torch.Tensor, seqs: list[ScheduledSeq], first_rows: list[int], read: bool
) -> PendingPromptLogprobs | None:
    """Compute the step's prompt-logprob rows from its eager forward's hidden states [tokens, dim]
    (first_rows: each sequence's first row there), ROWS_PER_SLICE rows at a time. Every rank
    calls it with the same scheduled sequences, so their compute_logits collectives line up; only
    the one that reads (rank 0) takes logprobs: the others' would be thrown away. Like the
    sampler's, they are the raw model distribution's: float32 log_softmax of the logits, packed
    as the sampler's (engine/logprob_rows.py; the chosen column is the next prompt token, k the
    most any sequence asks for): one tensor, so one copy to the host."""
    from shardserve.engine.sampler import on_device  # not at the top: sampler imports scheduler

    picked = [(i, s.prompt_rows) for i, s in enumerate(seqs) if s.prompt_rows is not None]
    if not picked:
        return None
    dev = hidden.device
    index = on_device([first_rows[i] + r.first + k for i, r in picked for k in range(len(r.target_ids))],
                      torch.int64, dev)
    n, k = index.numel(), max(r.top for _, r in picked)
    if read:
        targets = on_device([t for _, r in picked for t in r.target_ids], torch.int64, dev)
        values = torch.empty(n, 1 + 2 * k, dtype=torch.float32, device=dev)
    for lo in range(0, n, ROWS_PER_SLICE):
        hi = min(lo + ROWS_PER_SLICE, n)
        logits = model.compute_logits(hidden.index_select(0, index[lo:hi]))  # collective under TP
        if not read:
            continue
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values[lo:hi] = logprob_rows.pack(logprobs, targets[lo:hi], k)
        del logits, logprobs  # before the next slice's: one slice's at a time
    if not read:
        return None
    return PendingPromptLogprobs([(seqs[i].request_id, len(r.target_ids), r.top) for i, r in picked], values)
