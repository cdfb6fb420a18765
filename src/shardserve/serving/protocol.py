"""DJLServing / TGI text-generation schema: request models, SamplingParams, response bodies.

`{"inputs": str | [str], "parameters": {...}, "stream": bool}` ->
`{"generated_text": ..., "details": {"finish_reason", "generated_tokens", "tokens"}}` (a list for a
list of inputs). Streams are TGI-style events, one per generated token (TokenEvents):
`{"token": {"id", "text", "log_prob", "special"}, "generated_text": null, "details": null}`, the
last one carrying `generated_text` (and `details` when asked).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError, to_json

from shardserve.engine.request import FinishReason, RequestOutput
from shardserve.engine.sampling_params import SamplingParams
from shardserve.serving.http_errors import BODY, APIError, bad_request

DEFAULT_MAX_NEW_TOKENS = 30  # DJLServing LMI's default
_SURROGATE = re.compile("[\ud800-\udfff]")


class Strict(BaseModel):
    # Strict: "5" is not a number and a misspelt key is an error, not silently ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


class GenerateParameters(Strict):
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    do_sample: bool | None = Field(None, description="absent: sample when temperature/top_p/top_k/min_p is given")
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    details: bool = False
    return_full_text: bool = False
    ignore_eos: bool = False


class GenerateRequest(Strict):
    inputs: str | list[str] = Field(..., description="a prompt, or a list of prompts (a batch)")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


# A DJL / TGI request's fields by the engine's names ("prompt" and SamplingParams fields).
DJL_NAMES = {k: f"parameters.{k}" for k in SamplingParams.__dataclass_fields__} | {"prompt": "inputs"}


def make_sampling_params(names: Mapping[str, str] | None = None, defaults: Mapping | None = None,
                         **values) -> SamplingParams:
    """SamplingParams from the values a request gave (None = not given: the model's `defaults`
    from its generation_config.json, else SamplingParams' own). Its ValueError becomes a 400
    naming the field as the client spelt it (`names` maps SamplingParams field -> request field,
    e.g. max_new_tokens -> max_tokens)."""
    try:
        return SamplingParams(**dict(defaults or {}) | {k: v for k, v in values.items() if v is not None})
    except ValueError as e:
        raise refused(e, message_field(str(e)), names) from None


def check_unicode(data) -> None:
    """A 400 naming the first string (or object key) of a request's parsed JSON that holds a lone
    UTF-16 surrogate (an escaped "\\ud800" without its pair). Python's JSON parser lets them
    through, but they are no Unicode text: a tokenizer refuses them (a 500), and so does the UTF-8
    encoding of an answer that echoes them."""
    try:  # the usual case at Rust speed: encoding to UTF-8 fails on a surrogate, and only then
        to_json(data)
        return
    except (PydanticSerializationError, ValueError, RecursionError):
        pass  # the walk tells which string it is, if any
    path = _surrogate_path(data)
    if path is None:
        return
    # The path may hold the surrogate (a key's): escaped, for the error body is UTF-8 too.
    field = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", ".".join(map(str, path))) or BODY
    raise bad_request(f"{field}: not valid Unicode text: it holds a lone UTF-16 surrogate (an escape "
                      "from \\ud800 to \\udfff without its pair)", field)


def _surrogate_path(data) -> tuple | None:
    """The path to the first string or key holding a surrogate, None when none does."""
    stack = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
            continue
        if isinstance(value, dict):
            key = next((k for k in value if isinstance(k, str) and _SURROGATE.search(k)), None)
            if key is not None:
                return (*path, key)
            items = list(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))
        else:
            continue
        stack.extend(((*path, k), v) for k, v in reversed(items) if isinstance(v, (str, list, dict)))
    return None


def message_field(message: str) -> str:
    """The field a validation message starts with ("max_new_tokens must be ...")."""
    return message.split(" ", 1)[0]


def refused(error: ValueError, field: str | None, names: Mapping[str, str] | None) -> APIError:
    """A 400 for an engine's refusal of a request, in the client's terms: `names` maps the engine's
    field names (SamplingParams fields, "prompt") to the request's, in the message and as its
    param. Only SamplingParams fields are renamed in the message: "prompt" is also plain English,
    so a message that does not name the request's field gets it in front ("inputs: prompt must
    not be empty"), as DJL's error body has no param to name it."""
    names = names or {}
    renames = {k: v for k, v in names.items() if k in SamplingParams.__dataclass_fields__}
    message = str(error)
    if renames:
        message = re.sub(r"\b(" + "|".join(map(re.escape, renames)) + r")\b", lambda m: renames[m.group(1)], message)
    param = names.get(field, field) if field else None
    if param and not re.search(rf"(?<![\w.]){re.escape(param)}\b", message):
        message = f"{param}: {message}"
    return bad_request(message, param)


def to_sampling_params(p: GenerateParameters, defaults: Mapping | None = None) -> SamplingParams:
    """As DJL and TGI: greedy unless do_sample, or a sampling field without it. Fields left out
    take the model's `defaults` (engine/generation_config.py)."""
    sample = p.do_sample if p.do_sample is not None else any(
        v is not None for v in (p.temperature, p.top_p, p.top_k, p.min_p)
    )
    return make_sampling_params(
        DJL_NAMES, {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **(defaults or {})},
        max_new_tokens=p.max_new_tokens,
        min_new_tokens=p.min_new_tokens,
        temperature=p.temperature if sample else 0.0,
        top_p=p.top_p, top_k=p.top_k, min_p=p.min_p, repetition_penalty=p.repetition_penalty,
        presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty, seed=p.seed,
        stop=p.stop, ignore_eos=p.ignore_eos, logprobs=p.details,
    )


def finish_reason(out: RequestOutput, params: SamplingParams, eos_ids: frozenset[int]) -> str:
    """TGI's names: length | eos_token | stop_sequence."""
    if out.finish_reason == FinishReason.LENGTH:
        return "length"
    if out.finish_reason == FinishReason.STOP:
        last = out.token_ids[-1] if out.token_ids else None
        if last in eos_ids or last in params.stop_token_ids or not params.stop:
            return "eos_token"
        return "stop_sequence"
    return str(out.finish_reason)


class TokenEvents:
    """One stream's token events: one per generated token, pairing its id with its own text.

    The engine holds back text that may begin a stop string (RequestOutput.text grows only by text
    that is safe to show), so its delta_text lags the token ids. Each token's event waits here
    until its text (up to RequestOutput.token_text_ends) is safe, so that an id is never sent with
    another token's text. When the
    generation ends, the tokens still waiting go out with their text cut where the final text
    ends: a token inside the stop string that ended it gets text "". The events' texts thus add up
    to generated_text, which excludes the stop string (as DJL LMI's vLLM does; TGI itself would
    keep the stop sequence in generated_text).

    It reads only what is new in each update, so updates of any output kind do (a stream's are
    DELTA's), and keeps what the last event needs: the whole text and, for details, the tokens.
    """

    def __init__(self, tokenizer, details: bool = False):
        self.tokenizer = tokenizer
        self.details = details
        self.waiting: deque[tuple[int, float | None, int]] = deque()  # (id, log_prob, text end)
        self.unsent = ""  # the text received that no event carried yet
        self.sent_chars = 0  # where it starts in the whole text
        self.pieces: list[str] = []  # the whole text received
        self.token_ids: list[int] = []  # with details: the whole generation's
        self.logprobs: list[float] = []

    def take(self, out: RequestOutput) -> list[dict]:
        """The `token` objects of the events that `out` makes safe to send."""
        logprobs = out.new_entries(out.logprobs) or []
        for i, (token_id, end) in enumerate(zip(out.delta_token_ids, out.new_entries(out.token_text_ends),
                                                strict=True)):
            self.waiting.append((token_id, logprobs[i] if i < len(logprobs) else None, end))
        if self.details:
            self.token_ids += out.delta_token_ids
            self.logprobs += logprobs
        self.pieces.append(out.delta_text)
        self.unsent += out.delta_text
        safe = self.sent_chars + len(self.unsent)
        tokens = []
        while self.waiting and (out.finished or self.waiting[0][2] <= safe):
            token_id, log_prob, end = self.waiting.popleft()
            last = out.finished and not self.waiting
            end = safe if last else min(end, safe)  # the last one takes what the end flushed
            cut = max(end - self.sent_chars, 0)
            tokens.append(self._token(token_id, log_prob, self.unsent[:cut]))
            self.unsent, self.sent_chars = self.unsent[cut:], self.sent_chars + cut
        if out.finished and not tokens:  # nothing left to carry the final event (e.g. an abort)
            tokens.append({"id": None, "text": self.unsent, "log_prob": None, "special": False})
        return tokens

    def whole(self, out: RequestOutput) -> RequestOutput:
        """The last update `out` with the whole generation's text; its token_ids and logprobs are
        the whole generation's with details, else empty (generated() then reads neither)."""
        return replace(out, text="".join(self.pieces), token_ids=self.token_ids, logprobs=self.logprobs or None)

    def _token(self, token_id: int, log_prob: float | None, text: str) -> dict:
        return {"id": token_id, "text": text, "log_prob": log_prob, "special": token_id in self.tokenizer.all_special_ids}


def details(out: RequestOutput, params: SamplingParams, tokenizer, eos_ids: frozenset[int]) -> dict:
    special = set(tokenizer.all_special_ids)
    logprobs = out.logprobs or [None] * len(out.token_ids)
    return {
        "finish_reason": finish_reason(out, params, eos_ids),
        "generated_tokens": len(out.token_ids),
        "inputs": out.prompt,
        "tokens": [
            {"id": t, "text": tokenizer.decode([t]), "log_prob": lp, "special": t in special}
            for t, lp in zip(out.token_ids, logprobs, strict=False)
        ],
    }


def generated(out: RequestOutput, prompt: str, p: GenerateParameters, params: SamplingParams,
              tokenizer, eos_ids: frozenset[int]) -> dict:
    body: dict = {"generated_text": prompt + out.text if p.return_full_text else out.text}
    if p.details:
        body["details"] = details(out, params, tokenizer, eos_ids)
    return body


def stream_events(tokens: TokenEvents, out: RequestOutput, prompt: str, p: GenerateParameters,
                  params: SamplingParams, eos_ids: frozenset[int]) -> list[dict]:
    """The events of an engine update (none while its text is held back); the last one of the
    generation carries generated_text (and details when asked)."""
    events = [{"token": token, "generated_text": None, "details": None} for token in tokens.take(out)]
    if out.finished:
        events[-1].update(generated(tokens.whole(out), prompt, p, params, tokens.tokenizer, eos_ids))
    return events
