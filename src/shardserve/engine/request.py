"""A request's life inside the engine, and what the engine reports back about it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shardserve.engine.sampling_params import SamplingParams

# Stands for a token a step in flight is sampling (asynchronous scheduling): the ranks fill it in
# from that step's sampled tokens on the device; the host learns it one step later.
PLACEHOLDER = -1


class OutputKind(str, enum.Enum):
    """What a request's RequestOutputs hold (LLM.add_request's, AsyncEngine.generate's output_kind).

    Each output of a CUMULATIVE request copies everything so far: a long generation costs the
    engine O(length) per step. DELTA and FINAL cost it O(new tokens) per step.
    """

    CUMULATIVE = "cumulative"  # at every step, everything so far (and what is new)
    DELTA = "delta"  # at every step, only what is new
    FINAL = "final"  # one output, when the request finishes: everything


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_new_tokens or the model length reached
    STOP = "stop"  # EOS, a stop token id or a stop string
    ABORT = "abort"  # cancelled by the caller (an engine failure raises EngineDeadError instead)

    def __str__(self) -> str:
        return self.value


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None = None
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per output token
    # SamplingParams.prompt_logprobs of prompt tokens 1, 2 ... as steps return them, and how many
    # prompt positions' rows steps have been given (engine/prompt_logprobs.py: each once).
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    num_prompt_logprob_rows: int = 0
    status: RequestStatus = RequestStatus.WAITING
    # Tokens whose K/V are in the cache (prefix-cache hits included).
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    block_ids: list[int] = field(default_factory=list)
    # Unique per block table: the BlockManager gives each new table (after a free) a new id, and a
    # table only grows until it is freed, so equal ids mean one table, perhaps longer.
    table_id: int = -1
    finish_reason: FinishReason | None = None
    stop_token_id: int | None = None  # the stop id or EOS that ended it: its text is not output
    num_preemptions: int = 0
    # Tokens sampled by steps still in flight: counted in num_tokens, not yet known. 0 or 1, but 2
    # from scheduling a step until the step before it is updated (asynchronous scheduling).
    num_inflight: int = 0
    output_kind: OutputKind = OutputKind.CUMULATIVE

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """all_token_ids[start:end] without building the whole list (the engine's hot path);
        positions of tokens still in flight read PLACEHOLDER."""
        n, known = len(self.prompt_token_ids), self.num_known_tokens
        if end > known:
            head = self.token_slice(start, known) if start < known else []
            return head + [PLACEHOLDER] * (end - max(start, known))
        if start >= n:
            return self.output_token_ids[start - n : end - n]
        if end <= n:
            return self.prompt_token_ids[start:end]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n]

    @property
    def num_known_tokens(self) -> int:
        """Prompt and output tokens whose ids the host has."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Known tokens plus those in flight."""
        return self.num_known_tokens + self.num_inflight

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED


@dataclass
class RequestOutput:
    """One update about a request. What it holds depends on the request's OutputKind.

    CUMULATIVE: text, token_ids, token_text_ends, logprobs and top_logprobs hold everything so
    far, delta_text and delta_token_ids what is new since the previous output; the prompt logprobs
    come with every output. FINAL: a single output, when the request finishes, as CUMULATIVE's
    last, its deltas being everything (no output came before).
    DELTA: only what is new since the previous output: text is delta_text and token_ids is
    delta_token_ids (the same objects), and token_text_ends, logprobs and top_logprobs hold the
    new tokens' entries; a consumer that needs the whole keeps it. The prompt logprobs come once,
    with the first output. token_text_ends stay offsets into the whole text, not into this text:
    a token's text may come in a later output (held back), so a consumer pairing tokens with
    text relates positions across outputs anyway, and compares absolute ones with the length of
    the text it has had, converting nothing. An end already sent stays as sent: at the end the
    detokeniser may add the half character it held back to the last token's text.
    The rest (request_id, prompt, finished, finish_reason, ...) is the same in every kind.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    delta_text: str
    delta_token_ids: list[int]
    finished: bool
    finish_reason: FinishReason | None = None
    # Where each generated token's text ends in the detokenised text: the servers' per-token text
    # (stream events, text offsets) without detokenising again. Past len(text) while text is held
    # back for a stop string, or after one cut it.
    token_text_ends: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # log-probability of each generated token
    # For each generated token, the top_logprobs most likely (token id, logprob), most likely first.
    top_logprobs: list[list[tuple[int, float]]] | None = None
    num_cached_tokens: int = 0
    # SamplingParams.prompt_logprobs, from the first output on (once the whole prompt is computed):
    # each prompt token's logprob given the tokens before it (the first's: None) and, N > 0, the N
    # most likely (token id, logprob) at its position, most likely first (the first's: []).
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]]] | None = None
    # time.perf_counter() when the engine had the first generated token, in this process: the
    # time to first token of a request whose first output comes at its end (FINAL).
    first_token_time: float | None = None

    def new_entries(self, values: list | None) -> list | None:
        """The new tokens' entries of one of this output's per-token lists (token_text_ends,
        logprobs, top_logprobs), whatever its kind; None stays None."""
        return None if values is None else values[len(self.token_ids) - len(self.delta_token_ids):]
