"""OpenAI completions / chat schemas, their SamplingParams, the response envelopes and usage.

Fields the engine cannot honour (best_of > 1, suffix, a response_format other than text, n
outside [1, MAX_CHOICES], a tool_choice that needs guided decoding) are rejected with a 400 naming
them rather than silently ignored, as OpenAI's own API rejects what it does not know; so is a
string holding a lone UTF-16 surrogate, anywhere in the body (protocol.check_unicode). Null in a
field OpenAI's API makes nullable (stream, echo, logprobs, the penalties) is its default. `tools`:
serving/tool_calls.py. The `n` choices of a prompt are n engine requests (choice_params): with a
seed, choice j samples with seed + j, as in vLLM, so that each choice is reproducible and they
differ. Extensions, as in vLLM: top_k, min_p, repetition_penalty, min_tokens, ignore_eos,
skip_special_tokens. Sampling fields a request leaves
out take the model's generation_config.json values (engine/generation_config.py), as in vLLM.
`logit_bias` (token ids as strings, JSON keys, -> biases in [-100, 100]) is added to those tokens'
logits before sampling; logprobs stay the model's own, as in vLLM.

Log-probabilities (completions' `logprobs: N`, chat's `logprobs: true` with `top_logprobs: N`; N
in [0, 20] as in vLLM, where OpenAI's completions take up to 5): the chosen tokens' and the N most
likely tokens' at each position, from the model's raw distribution (openai_logprobs.py builds
them); with completions' `echo`, the prompt's tokens' too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shardserve.engine.request import FinishReason, RequestOutput
from shardserve.engine.sampling_params import MAX_TOP_LOGPROBS, SamplingParams
from shardserve.serving.http_errors import bad_request
from shardserve.serving.protocol import Strict, check_unicode, make_sampling_params

MAX_CHOICES = 128  # n: each choice is an engine request, and all of them hold queue slots at once
TOKEN_IDS = 2**32  # tokenizers hold ids as u32: decoding (an echo) a larger or negative one fails
SEEDS = 2**64  # a seed and seed - 2^64 draw alike (a negative seed is seed + 2^64 to torch)

# The request fields by the engine's names ("prompt": the completions API's; chat's is messages).
FIELD_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "prompt": "prompt"}


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(Strict):
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = 1  # null: 1, as OpenAI's
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data):
        check_unicode(data)
        return data

    # echo: completions'; logprobs: chat's boolean (completions' is null by default).
    @field_validator("stream", "presence_penalty", "frequency_penalty", "echo", "logprobs", mode="before",
                     check_fields=False)
    @classmethod
    def _null_is_default(cls, value, info: ValidationInfo):
        """OpenAI's API takes null for these (as vLLM's does): the default, as when left out."""
        return cls.model_fields[info.field_name].default if value is None else value

    def check_supported(self) -> None:
        if self.n is not None and not 1 <= self.n <= MAX_CHOICES:
            raise bad_request(f"n: must be an integer in [1, {MAX_CHOICES}], got {self.n}", "n")
        if self.stream_options is not None and not self.stream:  # as vLLM: not silently ignored
            raise bad_request("stream_options: only allowed when stream is true", "stream_options")

    def sampling_params(self, max_tokens: int, logprobs: bool, max_tokens_field: str = "max_tokens",
                        top_logprobs: int = 0, top_logprobs_field: str = "top_logprobs",
                        defaults: Mapping | None = None) -> SamplingParams:
        """max_tokens_field / top_logprobs_field: the request fields max_tokens and top_logprobs
        came from, for errors to name. defaults: the model's generation_config.json sampling
        values, for the fields the request leaves out (as vLLM)."""
        self.check_supported()
        names = FIELD_NAMES | {"max_new_tokens": max_tokens_field, "top_logprobs": top_logprobs_field}
        return make_sampling_params(
            names, defaults, max_new_tokens=max_tokens, min_new_tokens=self.min_tokens,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=self.seed, stop=self.stop,
            ignore_eos=self.ignore_eos, logprobs=logprobs, skip_special_tokens=self.skip_special_tokens,
            top_logprobs=top_logprobs, logit_bias=self.token_biases(),
        )

    def token_biases(self) -> list[tuple[int, float]] | None:
        """logit_bias by token id: JSON keys are strings; SamplingParams checks ids and biases."""
        if self.logit_bias is None:
            return None
        pairs = []  # not a dict: "1" and "01" name one id, which SamplingParams refuses twice
        for key, bias in self.logit_bias.items():
            try:  # int() also refuses more than sys.get_int_max_str_digits() digits
                token_id = int(key) if key.isascii() and key.isdigit() else None
            except ValueError:
                token_id = None
            if token_id is None:
                shown = repr(key) if len(key) <= 40 else f"{key[:40]!r}... ({len(key)} characters)"
                raise bad_request(f"logit_bias: keys must be token ids (strings of integers >= 0), got {shown}",
                                  "logit_bias")
            pairs.append((token_id, bias))
        return pairs

    @property
    def choices(self) -> int:
        return 1 if self.n is None else self.n

    def choice_params(self, params: SamplingParams) -> list[SamplingParams]:
        """The params of each of the n choices: choice j's seed is seed + j (wrapped into the
        seeds SamplingParams takes), so choice 0 samples as the request would with n = 1."""
        if self.seed is None:
            return [params] * self.choices
        return [replace(params, seed=_wrap_seed(self.seed + j)) for j in range(self.choices)]


def _wrap_seed(seed: int) -> int:
    return seed - SEEDS if seed >= SEEDS else seed


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = Field(None, description="the chosen token's log-probability and those of the "
                                                   f"N most likely tokens, N in [0, {MAX_TOP_LOGPROBS}]")
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _token_ids(cls, prompt):
        """Token ids a tokenizer can hold; the engine checks them against the vocabulary."""
        if isinstance(prompt, str) or not prompt or isinstance(prompt[0], str):
            return prompt
        for ids in [prompt] if isinstance(prompt[0], int) else prompt:
            low, high = (min(ids), max(ids)) if ids else (0, 0)
            if low < 0 or high >= TOKEN_IDS:
                raise PydanticCustomError("token_id", "token ids must be integers in [0, 2^32), got {bad}",
                                          {"bad": low if low < 0 else high})
        return prompt

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1):
            raise bad_request("best_of: only 1 is supported", "best_of")
        if self.suffix:
            raise bad_request("suffix: not supported", "suffix")
        check_top_logprobs("logprobs", self.logprobs)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class FunctionCall(Strict):
    name: str
    arguments: str  # JSON text, as OpenAI's API carries it


class ToolCall(Strict):
    """A call an assistant message made, as clients send it back with the tool's result."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's
    tool_call_id: str | None = None  # a tool's: the call it answers


class ResponseFormat(Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def check_supported(self) -> None:
        super().check_supported()
        check_top_logprobs("top_logprobs", self.top_logprobs)
        if self.top_logprobs and not self.logprobs:  # 0 asks for nothing: accepted, as vLLM does
            raise bad_request("top_logprobs: needs logprobs: true", "top_logprobs")


def check_top_logprobs(field: str, value: int | None) -> None:
    """400 naming `field` unless it is null or a number of alternatives the engine computes."""
    if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
        raise bad_request(f"{field}: must be an integer in [0, {MAX_TOP_LOGPROBS}], got {value}", field)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def openai_finish_reason(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == FinishReason.LENGTH else "stop"


def usage(outs: list[RequestOutput], n: int = 1) -> dict:
    """A request's usage: `outs` are n choices per prompt, prompt by prompt."""
    return counted_usage([len(o.prompt_token_ids) for o in outs], [len(o.token_ids) for o in outs], n)


def counted_usage(prompt_tokens: list[int], completion_tokens: list[int], n: int = 1) -> dict:
    """Usage from each choice's token counts, n choices per prompt, prompt by prompt: each prompt
    counts once (as vLLM), every choice's completion tokens count."""
    prompt, completion = sum(prompt_tokens[::n]), sum(completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def envelope(kind: str, request_id: str, model: str, choices: list[dict], extra: dict | None = None) -> dict:
    body = {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    body.update(extra or {})
    return body


class ChoiceStreams:
    """What a stream keeps of each choice of a request (choice k answers prompt k // n), whose
    updates (DELTA's) carry only what is new: the token counts usage reads, and where its text
    ends, where its next token's starts. With stream_options.include_usage, each chunk's `usage`
    is null, or that of its choice with continuous_usage_stats (vLLM's extension), and a last
    chunk has the whole request's (usage())."""

    def __init__(self, body: _Sampling, kind: str, request_id: str, model: str, choices: int):
        self.include = body.stream_options.include_usage if body.stream_options else False
        self.continuous = self.include and body.stream_options.continuous_usage_stats
        self.kind, self.request_id, self.model, self.n = kind, request_id, model, body.choices
        self.prompt_tokens: list[int | None] = [None] * choices  # None: no update yet
        self.tokens = [0] * choices
        self.text_ends = [0] * choices

    def add(self, k: int, out: RequestOutput) -> None:
        self.prompt_tokens[k] = len(out.prompt_token_ids)
        self.tokens[k] += len(out.delta_token_ids)
        if out.token_text_ends:
            self.text_ends[k] = out.token_text_ends[-1]

    def with_usage(self, k: int, event: dict) -> dict:
        """The event of choice k (after its update is added), with usage as asked."""
        if self.include:
            event["usage"] = counted_usage([self.prompt_tokens[k]], [self.tokens[k]]) if self.continuous else None
        return event

    def closing(self) -> list[dict]:
        """The last chunk, with the whole request's usage, when asked."""
        if not self.include or None in self.prompt_tokens:
            return []
        counts = counted_usage(self.prompt_tokens, self.tokens, self.n)
        return [envelope(self.kind, self.request_id, self.model, [], {"usage": counts})]
