"""The OpenAI APIs' log-probabilities: completions' `logprobs` object (tokens, token_logprobs,
top_logprobs, text_offset) and chat's `logprobs.content`, whole or per streamed chunk, from the
engine's RequestOutput (logprobs and top_logprobs; with `echo`, the prompt's too, from
prompt_logprobs)."""

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


def echo_logprobs(tokenizer, out: RequestOutput, offsets: list[int] | None = None) -> dict:
    """completion_logprobs of the echoed prompt, as vLLM's: the first token has no logprob and no
    top_logprobs entry (null), every other one its logprob given the tokens before it; text_offset:
    where each token's text starts in the echoed prompt: `offsets`, a text prompt's from its
    encoding (encode_text), else prompt_text_offsets."""
    ids = out.prompt_token_ids
    if offsets is None:
        offsets = prompt_text_offsets(tokenizer, ids)
    tops = out.prompt_top_logprobs[1:] if out.prompt_top_logprobs is not None else None
    rest = completion_logprobs(tokenizer, ids[1:], out.prompt_logprobs[1:], tops, offsets[1:])
    first = {"tokens": tokenizer.decode(ids[:1]), "token_logprobs": None, "top_logprobs": None,
             "text_offset": offsets[0]}
    return {key: [first[key], *rest[key]] for key in first}


def encode_text(tokenizer, text: str, offsets: bool = False) -> tuple[list[int], list[int] | None]:
    """A text prompt's token ids (tokenizer.encode's) and, when `offsets` are asked and a fast
    tokenizer has them, where each token's text starts in `text`, which is echoed as given; one
    encoding gives both, so the route encodes a prompt once for everything it needs."""
    if offsets and getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, return_offsets_mapping=True)
        return encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
    return tokenizer.encode(text), None


def prompt_text_offsets(tokenizer, token_ids: list[int]) -> list[int]:
    """Where each prompt token's text starts in tokenizer.decode(token_ids), special tokens
    included, as a token-id prompt is echoed: where the text of the tokens before it ends."""
    detokenizer, offsets, end = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False), [], 0
    for token_id in token_ids:
        offsets.append(end)
        end += len(detokenizer.add(token_id))
    return offsets


def joined(*parts: dict) -> dict:
    """completion_logprobs objects one after the other (the echo's, then the completion's)."""
    return {key: [v for part in parts for v in part[key]] for key in parts[0]}


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


def text_offsets(out: RequestOutput, start: int = 0, before: int = 0) -> list[int]:
    """OpenAI's `text_offset` of out's tokens (a DELTA update's: its new ones): where each
    generated token's text starts in the returned text, `start` being the echoed prompt's length;
    that is where the token before it ends (RequestOutput.token_text_ends). A token that only
    completes a character begun by the one before it starts where that character does; the tokens
    of a stop string that cut the text start at or past its end (they stay in `tokens`, as in
    vLLM). before: where the text of the tokens before out's ends (a DELTA update's: the last
    token_text_ends of the updates before it)."""
    ends = out.token_text_ends
    return [start + (ends[i - 1] if i else before) for i in range(len(out.token_ids))]


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
        self.logprobs += out.new_entries(out.logprobs) or []
        tops = out.new_entries(out.top_logprobs)
        if tops is not None:
            self.top_logprobs = (self.top_logprobs or []) + tops

    def take(self) -> tuple[list[int], list[float], list[TopLogprobs] | None]:
        taken = self.token_ids, self.logprobs, self.top_logprobs
        self.token_ids, self.logprobs, self.top_logprobs = [], [], None
        return taken
