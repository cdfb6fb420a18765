"""Token ids -> text for each request: incremental detokenisation, stop strings, outputs.

Stop strings are searched in the text as it grows; when one appears the text is cut before it
and the request finishes. While a request runs, the last `len(longest stop) - 1` characters are
held back from its outputs, so a client never sees text that a stop string later removes.

A step costs O(new tokens) per request however long the generation, but for the outputs of a
CUMULATIVE request (request.OutputKind), which copy everything so far: the text let out is kept
in pieces, joined only for an output that holds it whole, and only the tail held back is
searched for stop strings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shardserve.engine.request import OutputKind, Request, RequestOutput
from shardserve.engine.tokenizer import IncrementalDetokenizer


@dataclass
class _TextState:
    detokenizer: IncrementalDetokenizer
    holdback: int
    # The text let out (no stop string can remove it any more): its pieces, kept unless the
    # request is DELTA's (whose outputs never hold it whole), and its length.
    pieces: list[str] = field(default_factory=list)
    chars: int = 0
    tail: str = ""  # the text after it, held back: a stop string may begin there
    sent_tokens: int = 0  # the generated tokens of the outputs so far
    stopped: bool = field(default=False)
    flushed: bool = False  # the detokeniser let out what it held back: once, at the end
    ends: list[int] = field(default_factory=list)  # RequestOutput.token_text_ends
    # The prompt logprobs the next output carries; None before the first output, which builds
    # them (it comes with the request's first token, when every prompt row is in, or ends the
    # request). Later outputs share them, but DELTA's carry none.
    prompt_logprobs: tuple[list | None, list | None] | None = None
    first_token_time: float | None = None


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._states: dict[str, _TextState] = {}

    def add(self, request: Request) -> None:
        p = request.params
        self._states[request.request_id] = _TextState(
            detokenizer=IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids, p.skip_special_tokens),
            holdback=max((len(s) for s in p.stop), default=1) - 1,
        )

    def new_text(self, request: Request, new_token_ids: list[int]) -> bool:
        """Detokenize new tokens; True when a stop string ended the request's text. As in vLLM, the
        text of a stop id or EOS that ended the request is left out (its id stays in token_ids),
        and stop strings count only from min_new_tokens on, as stop ids do."""
        state = self._states[request.request_id]
        if state.first_token_time is None:
            state.first_token_time = time.perf_counter()
        old = len(state.tail)  # the held-back text that came before these tokens
        dropped = request.is_finished and request.stop_token_id is not None and bool(new_token_ids)
        for token_id in new_token_ids[:-1] if dropped else new_token_ids:  # the callers pass the newest
            state.tail += state.detokenizer.add(token_id)
            state.ends.append(state.chars + len(state.tail))
        if request.is_finished:
            _flush(state)
        if dropped:  # the stop token's text is left out: it ends where the text does
            state.ends.append(state.chars + len(state.tail))
        stops = request.params.stop
        if stops and not state.stopped and len(request.output_token_ids) >= request.params.min_new_tokens:
            # Matches that end in the new text, so all begin in the tail: one that ended before
            # was searched for then, or came before min_new_tokens and does not count.
            hits = [i for s in stops if (i := state.tail.find(s, max(old - len(s) + 1, 0))) >= 0]
            if hits:
                state.tail = state.tail[: min(hits)]
                state.stopped = True
                return True
        return False

    def output(self, request: Request) -> RequestOutput | None:
        """The request's output after this step's new_text (None: a FINAL request's, until it
        finishes): call it once a step, as it lets out the text that is safe to show."""
        state = self._states[request.request_id]
        finished = request.is_finished
        if finished:
            if not state.stopped:  # aborted, or out of KV room: no last new_text call
                _flush(state)
            del self._states[request.request_id]
        cut = len(state.tail) if finished else max(len(state.tail) - state.holdback, 0)
        delta_text, state.tail = state.tail[:cut], state.tail[cut:]
        state.chars += cut
        if delta_text and request.output_kind is not OutputKind.DELTA:
            state.pieces.append(delta_text)
        if request.output_kind is OutputKind.FINAL and not finished:
            return None
        tokens, first = request.output_token_ids, state.sent_tokens
        state.sent_tokens = len(tokens)
        delta = request.output_kind is OutputKind.DELTA
        start = first if delta else 0  # where the output's "so far" fields start
        text = delta_text if delta else _text(state)
        token_ids = tokens[start:]
        if state.prompt_logprobs is None:
            state.prompt_logprobs = _prompt_logprobs(request)
        prompt_logprobs, prompt_top_logprobs = state.prompt_logprobs
        if delta:
            state.prompt_logprobs = (None, None)
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            text=text,
            token_ids=token_ids,
            # FINAL's first output is its only one: everything is new
            delta_text=text if request.output_kind is OutputKind.FINAL else delta_text,
            delta_token_ids=token_ids if start == first else tokens[first:],
            finished=finished,
            finish_reason=request.finish_reason,
            token_text_ends=state.ends[start:],
            logprobs=request.logprobs[start:] if request.params.logprobs else None,
            top_logprobs=request.top_logprobs[start:] if request.params.top_logprobs else None,
            num_cached_tokens=request.num_cached_tokens,
            prompt_logprobs=prompt_logprobs,
            prompt_top_logprobs=prompt_top_logprobs,
            first_token_time=state.first_token_time,
        )

    def discard(self, request_id: str) -> None:
        self._states.pop(request_id, None)


def _text(state: _TextState) -> str:
    """The text let out so far, whole; its pieces become that one (the next join copies it once)."""
    if len(state.pieces) > 1:
        state.pieces = ["".join(state.pieces)]
    return state.pieces[0] if state.pieces else ""


def _flush(state: _TextState) -> None:
    """At the end, what the detokeniser held back (half a character) is the last token's text."""
    if state.flushed:
        return
    state.flushed = True
    state.tail += state.detokenizer.flush()
    if state.ends:
        state.ends[-1] = state.chars + len(state.tail)


def _prompt_logprobs(request: Request) -> tuple[list | None, list | None]:
    """RequestOutput's prompt_logprobs and prompt_top_logprobs, or both None while a prompt
    token's logprob is missing. The first output builds them once (as vLLM's, they come with it)."""
    n = request.params.prompt_logprobs
    if n is None or len(request.prompt_logprobs) < len(request.prompt_token_ids) - 1:
        return None, None
    return [None, *request.prompt_logprobs], ([[], *request.prompt_top_logprobs] if n else None)
