"""Continuous batching: decide which tokens of which requests run in the next step.

Every request is a list of tokens (prompt + generated) of which `num_computed_tokens` already
have K/V in the cache. A step gives each running request its next tokens (one for a decode, a
chunk for a prefill) within a token budget, then admits waiting requests while budget, sequence
slots and KV blocks last. When blocks run out, the most recently admitted running request is
preempted: its blocks are freed and it is recomputed later from its tokens, so it ends with
exactly the output it would have had.

Asynchronous scheduling (LLM with async_scheduling): the next step is scheduled while the last
one still runs, before its sampled tokens are known. A request that samples in a step gets one
token in flight (`Request.num_inflight`), which the next step computes as a PLACEHOLDER the
ranks fill in on the device; `update` later appends the real token. So `num_computed_tokens`
advances when a step is scheduled, a request whose in-flight token is its last (length limits)
is not scheduled again, and one that stops on a token already has a step in flight whose result
`update` drops (its cache writes go to blocks that are freed; later steps run after them on the
same GPU stream, so a new owner of such a block writes after).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.prompt_logprobs import (
    PromptLogprobRows,
    PromptLogprobs,
    cacheable_tokens,
    rows_to_compute,
)
from shardserve.engine.request import FinishReason, Request, RequestStatus
from shardserve.engine.sampling_params import SamplingParams


@dataclass
class SamplingInfo:
    """What the sampler needs for one sequence's next token (plain values only)."""

    greedy: bool  # SamplingParams.greedy: argmax, no noise
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    logprobs: bool
    top_logprobs: int  # the N most likely tokens' logprobs too (logprobs on)
    # With a repetition penalty, the prompt, sent at the request's first sampled token only: the
    # sampler keeps the tokens a penalty counts per request on the device and adds each later
    # step's newest input token itself (Sampler.sample's last_token_ids, which may still be in
    # flight). So a step sends no per-request token list.
    penalty_token_ids: list[int]
    suppress_token_ids: list[int]  # EOS / stop ids while below min_new_tokens
    # SamplingParams.logit_bias's (token id, bias) pairs, sent, as the penalties' prompt, at the
    # request's first sampled token only: the sampler keeps them on the device from then on.
    logit_bias: tuple[tuple[int, float], ...]
    has_logit_bias: bool

    @property
    def has_penalty(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass
class ScheduledSeq:
    request_id: str
    token_ids: list[int]  # tokens whose K/V this step computes
    start_pos: int  # position of token_ids[0] (= tokens already in the cache)
    block_ids: list[int]  # the sequence's whole block table
    sampling: SamplingInfo | None  # None while a prefill chunk still leaves prompt tokens
    prompt_rows: PromptLogprobRows | None = None  # rows whose prompt logprobs the request asks for
    # Names block_ids' table (Request.table_id): the graphs rewrite only its new blocks. -1: none.
    table_id: int = -1


@dataclass
class SchedulerOutput:
    seqs: list[ScheduledSeq] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)  # lets the ranks drop per-request state
    # The Request of each seq, for `Scheduler.update`: under asynchronous scheduling a request may
    # finish, and its id be reused, before its step's tokens arrive. It stays in the engine's
    # process: the ranks get plain values only (__getstate__).
    requests: list[Request] = field(default_factory=list, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "requests": []}

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool,
        eos_token_ids: tuple[int, ...],
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.chunked = enable_chunked_prefill
        self.token_budget = max_num_batched_tokens
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_since_last_step: list[str] = []
        self.num_preemptions = 0  # since start, for stats

    # -- queue management -------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish(self, request_id: str, reason: FinishReason) -> Request | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)
        request.num_inflight = 0  # a token still in flight is dropped
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self._finished_since_last_step.append(request_id)
        return request

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- the schedule beat --------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_ids=self._finished_since_last_step)
        self._finished_since_last_step = []
        budget = self.token_budget
        preempted = False

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0 or self._last_token_in_flight(request):
                i += 1  # finishes when its in-flight token arrives
                continue
            while not self.block_manager.allocate(request, num_new):
                victim = self.running.pop()  # never one already scheduled: those are before i
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                self._schedule(out, request, num_new)
                budget -= num_new
                i += 1
                continue
            break

        # Admit waiting requests; not in a step that had to preempt (memory is tight). Without
        # chunking a prompt is never split: one longer than what is left of the budget waits,
        # unless it is the step's first, which then runs whole (kv_budget.step_tokens counts it).
        first_prompt = True
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            if request.num_inflight:  # preempted with a token in flight: recompute once it is known
                break
            cached = self.block_manager.find_cached_prefix(request, cacheable_tokens(request))
            num_cached = len(cached) * self.block_manager.block_size
            num_new = request.num_tokens - num_cached
            if num_new > budget:
                if self.chunked:
                    num_new = budget
                elif not first_prompt:
                    break
            if not self.block_manager.allocate(request, num_new, cached):
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_cached
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            self._schedule(out, request, num_new)
            budget -= num_new
            first_prompt = False
        return out

    def _schedule(self, out: SchedulerOutput, request: Request, num_new: int) -> None:
        start = request.num_computed_tokens
        completes = start + num_new == request.num_tokens
        out.seqs.append(ScheduledSeq(
            request_id=request.request_id,
            token_ids=request.token_slice(start, start + num_new),
            start_pos=start,
            # Not copied: the step consumes it before the request's table can change again.
            block_ids=request.block_ids,
            sampling=self._sampling_info(request) if completes else None,
            prompt_rows=rows_to_compute(request, start, start + num_new),
            table_id=request.table_id,
        ))
        out.requests.append(request)
        request.num_computed_tokens = start + num_new
        request.num_inflight += completes

    def _last_token_in_flight(self, request: Request) -> bool:
        """The token in flight ends the request by length: nothing more to schedule."""
        num_out = len(request.output_token_ids) + request.num_inflight
        return request.num_inflight > 0 and (
            num_out >= request.params.max_new_tokens or request.num_tokens >= self.max_model_len
        )

    def _sampling_info(self, request: Request) -> SamplingInfo:
        p: SamplingParams = request.params
        num_out = len(request.output_token_ids) + request.num_inflight
        first = num_out == 0  # this step samples the request's first token
        suppress: list[int] = []
        if num_out < p.min_new_tokens:
            suppress = list(p.ending_token_ids(self.eos_token_ids))
        return SamplingInfo(
            greedy=p.greedy,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            seed=p.seed,
            logprobs=p.logprobs,
            top_logprobs=p.top_logprobs,
            penalty_token_ids=request.all_token_ids if p.repetition_penalty != 1.0 and first else [],
            suppress_token_ids=suppress,
            logit_bias=p.logit_bias if first else (),
            has_logit_bias=bool(p.logit_bias),
        )

    def _preempt(self, request: Request) -> None:
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # -- the update beat ----------------------------------------------------------------------
    def update(self, sched: SchedulerOutput, sampled: dict[str, tuple[int, float | None]],
               prompt_logprobs: dict[str, PromptLogprobs] | None = None) -> list[Request]:
        """Append a step's sampled tokens and prompt logprobs; returns the requests that got a
        token."""
        updated = []
        for seq, request in zip(sched.seqs, sched.requests, strict=True):
            if request.is_finished:  # finished or aborted while the step ran
                continue
            # Steps are updated in launch order, so each request's prompt rows arrive in order.
            if prompt_logprobs and seq.request_id in prompt_logprobs:
                values, tops = prompt_logprobs[seq.request_id]
                request.prompt_logprobs += values
                request.prompt_top_logprobs += tops or []
            result = sampled.get(seq.request_id)
            if result is not None:
                request.num_inflight -= 1
                request.output_token_ids.append(result[0])
                if request.params.logprobs:
                    request.logprobs.append(result[1])
                if request.params.top_logprobs:
                    request.top_logprobs.append(result[2])
            self.block_manager.cache_full_blocks(request)  # before a finish frees the blocks
            if result is None:
                continue
            updated.append(request)
            reason = self._check_stop(request, result[0])
            if reason is not None:
                self.finish(request.request_id, reason)
        return updated

    def _check_stop(self, request: Request, token_id: int) -> FinishReason | None:
        p = request.params
        num_out = len(request.output_token_ids)
        if num_out >= p.min_new_tokens and p.ends_on(token_id, self.eos_token_ids):
            request.stop_token_id = token_id
            return FinishReason.STOP
        if num_out >= p.max_new_tokens or request.num_known_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None
