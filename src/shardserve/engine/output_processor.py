"""Token ids -> text for each request: incremental detokenisation, stop strings, outputs.

Stop strings are searched in the text as it grows; when one appears the text is cut before it
and the request finishes. While a request runs, the last `len(longest stop) - 1` characters are
held back from streamed deltas, so a client never sees text that a stop string later removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardserve.engine.request import Request, RequestOutput
from shardserve.engine.tokenizer import IncrementalDetokenizer


@dataclass
class _TextState:
    detokenizer: IncrementalDetokenizer
    text: str = ""
    emitted_chars: int = 0
    emitted_tokens: int = 0
    holdback: int = 0
    stopped: bool = field(default=False)
    flushed: bool = False  # the detokeniser let out what it held back: once, at the end
    ends: list[int] = field(default_factory=list)  # RequestOutput.token_text_ends
    # RequestOutput's prompt logprobs, built once when complete: every later output shares them.
    prompt_logprobs: tuple[list, list | None] | None = None


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
        dropped = request.is_finished and request.stop_token_id is not None and bool(new_token_ids)
        for token_id in new_token_ids[:-1] if dropped else new_token_ids:  # the callers pass the newest
            state.text += state.detokenizer.add(token_id)
            state.ends.append(len(state.text))
        if request.is_finished:
            _flush(state)
        if dropped:  # the stop token's text is left out: it ends where the text does
            state.ends.append(len(state.text))
        stops = request.params.stop
        if stops and not state.stopped and len(request.output_token_ids) >= request.params.min_new_tokens:
            # Only the part that may contain a new match: the tail that the last call held back.
            window_start = max(state.emitted_chars - state.holdback, 0)
            hits = [i for s in stops if (i := state.text.find(s, window_start)) >= 0]
            if hits:
                state.text = state.text[: min(hits)]
                state.stopped = True
                return True
        return False

    def output(self, request: Request) -> RequestOutput:
        state = self._states[request.request_id]
        finished = request.is_finished
        if finished and not state.stopped:  # aborted, or out of KV room: no last new_text call
            _flush(state)
        visible = len(state.text) if finished else max(len(state.text) - state.holdback, state.emitted_chars)
        delta_text = state.text[state.emitted_chars : visible]
        state.emitted_chars = visible
        tokens = request.output_token_ids
        delta_tokens = tokens[state.emitted_tokens :]
        state.emitted_tokens = len(tokens)
        if finished:
            del self._states[request.request_id]
        if state.prompt_logprobs is None:
            state.prompt_logprobs = _prompt_logprobs(request)
        prompt_logprobs, prompt_top_logprobs = state.prompt_logprobs or (None, None)
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            text=state.text[:visible],
            token_ids=list(tokens),
            delta_text=delta_text,
            delta_token_ids=list(delta_tokens),
            finished=finished,
            finish_reason=request.finish_reason,
            token_text_ends=list(state.ends),
            logprobs=list(request.logprobs) if request.params.logprobs else None,
            top_logprobs=list(request.top_logprobs) if request.params.top_logprobs else None,
            num_cached_tokens=request.num_cached_tokens,
            prompt_logprobs=prompt_logprobs,
            prompt_top_logprobs=prompt_top_logprobs,
        )

    def discard(self, request_id: str) -> None:
        self._states.pop(request_id, None)


def _flush(state: _TextState) -> None:
    """At the end, what the detokeniser held back (half a character) is the last token's text."""
    if state.flushed:
        return
    state.flushed = True
    state.text += state.detokenizer.flush()
    if state.ends:
        state.ends[-1] = len(state.text)


def _prompt_logprobs(request: Request) -> tuple[list, list | None] | None:
    """RequestOutput's prompt_logprobs and prompt_top_logprobs; None until every prompt token's
    logprob is in (they come with the first output, as vLLM's do, and with every later one)."""
    n = request.params.prompt_logprobs
    if n is None or len(request.prompt_logprobs) < len(request.prompt_token_ids) - 1:
        return None
    return [None, *request.prompt_logprobs], ([[], *request.prompt_top_logprobs] if n else None)
