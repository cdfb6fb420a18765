"""The OpenAI APIs' log-probabilities: completions' `logprobs` object (tokens, token_logprobs,
top_logprobs, text_offset) and chat's `logprobs.content`, whole or per streamed chunk, from the
engine's RequestOutput (logprobs and top_logprobs)."""

from __future__ import annotations

from shardserve.engine.request import RequestOutput
from shardserve.engine.tokenizer import IncrementalDetokenizer

# What a log-probability of -inf is sent as (JSON has no infinities), as OpenAI and vLLM do.
MIN_LOGPROB = -9999.0

TopLogprobs = list[tuple[int, float]]  # one token's alternatives: (token id, logprob), most likely first


def completion_logprobs(tokenizer, token_ids: list[int], logprobs: list[float],
                        top_logprobs: list[TopLogprobs] | None = None, text_offset: list[int] | None = None) -> dict:
    """The completions API's `logprobs` of these tokens. `top_logprobs[i]`: token i's most likely
    alternatives (None: logprobs 0). Each top_logprobs entry maps token text -> logprob: the chosen
    token first, then the alternatives, as vLLM's (OpenAI's "up to logprobs + 1" entries; with
    logprobs 0 only the chosen token). Tokens of the same text are one entry, the first's logprob."""
    decode = _decoder(tokenizer)
    tokens = [decode(t) for t in token_ids]
    token_logprobs = [_finite(lp) for lp in logprobs]
    tops = []
    for i, (token, lp) in enumerate(zip(tokens, token_logprobs, strict=False)):
        entry = {token: lp}
        for alt_id, alt_lp in _alternatives(top_logprobs, i):
            entry.setdefault(decode(alt_id), _finite(alt_lp))
        tops.append(entry)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": text_offset}


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list[float],
                  top_logprobs: list[TopLogprobs] | None = None) -> dict:
    """The chat API's `logprobs` of these tokens: each with its `top_logprobs[i]` alternatives
    (most likely first; none when not asked)."""
    decode = _decoder(tokenizer)
    content = []
    for i, (token_id, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
        alternatives = [_chat_token(decode(alt_id), alt_lp) for alt_id, alt_lp in _alternatives(top_logprobs, i)]
        content.append(_chat_token(decode(token_id), lp) | {"top_logprobs": alternatives})
    return {"content": content}


def _chat_token(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": _finite(logprob), "bytes": list(token.encode("utf-8", errors="replace"))}


def _alternatives(top_logprobs: list[TopLogprobs] | None, i: int) -> TopLogprobs:
    return top_logprobs[i] if top_logprobs is not None and i < len(top_logprobs) else []


def _finite(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def _decoder(tokenizer):
    """tokenizer.decode of one token id, each id decoded once (alternatives repeat)."""
    texts: dict[int, str] = {}

    def decode(token_id: int) -> str:
        text = texts.get(token_id)
        if text is None:
            text = texts[token_id] = tokenizer.decode([token_id])
        return text

    return decode


def delta_logprobs(out: RequestOutput) -> list[float]:
    """The log-probabilities of this update's new tokens (out.logprobs is cumulative)."""
    return (out.logprobs or [])[len(out.token_ids) - len(out.delta_token_ids):]


def delta_top_logprobs(out: RequestOutput) -> list[TopLogprobs] | None:
    """The alternatives of this update's new tokens (out.top_logprobs is cumulative); None when
    not asked."""
    if out.top_logprobs is None:
        return None
    return out.top_logprobs[len(out.token_ids) - len(out.delta_token_ids):]


class TextOffsets:
    """OpenAI's `text_offset`: where each generated token's text starts in the returned text.

    The tokens are detokenised again as the engine does (incrementally, after the prompt), so a
    token's offset is `start` (the echoed prompt's length) plus the length of the text of the
    tokens before it; a token that only completes a character begun by the one before it starts
    where that character does. The tokens of a stop string that cut the text start at or past its
    end (they stay in `tokens`, as in vLLM). One object per choice; cumulative, as the engine's
    outputs are.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool, start: int = 0):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.detokenizer: IncrementalDetokenizer | None = None
        self.offsets: list[int] = []
        self.end = start

    def of(self, out: RequestOutput) -> list[int]:
        """The offsets of all of out's tokens (out.token_ids)."""
        self._add(out)
        return self.offsets[:len(out.token_ids)]

    def delta(self, out: RequestOutput) -> list[int]:
        """The offsets of this update's new tokens (out.delta_token_ids)."""
        self._add(out)
        return self.offsets[len(out.token_ids) - len(out.delta_token_ids):len(out.token_ids)]

    def _add(self, out: RequestOutput) -> None:
        if self.detokenizer is None:
            self.detokenizer = IncrementalDetokenizer(self.tokenizer, out.prompt_token_ids, self.skip_special_tokens)
        for token_id in out.token_ids[len(self.offsets):]:
            self.offsets.append(self.end)
            self.end += len(self.detokenizer.add(token_id))


class PendingTokens:
    """The tokens (ids, log-probabilities, alternatives) of a stream's updates that sent no chunk
    yet.

    An update whose text the engine holds back (a possible stop string's start, half a UTF-8
    character) has tokens but no text; a route that sends no chunk for it adds them here, and the
    next chunk it sends takes them all, so the chunks' logprobs add up to the whole answer's.
    """

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[TopLogprobs] | None = None  # None: none asked (yet)

    def add(self, out: RequestOutput) -> None:
        self.token_ids += out.delta_token_ids
        self.logprobs += delta_logprobs(out)
        tops = delta_top_logprobs(out)
        if tops is not None:
            self.top_logprobs = (self.top_logprobs or []) + tops

    def take(self) -> tuple[list[int], list[float], list[TopLogprobs] | None]:
        taken = self.token_ids, self.logprobs, self.top_logprobs
        self.token_ids, self.logprobs, self.top_logprobs = [], [], None
        return taken
