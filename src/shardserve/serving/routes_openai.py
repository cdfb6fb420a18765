"""OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions (SSE streams that
end with `data: [DONE]`, `usage` on every answer and, with stream_options.include_usage, as a
last chunk).

`n` choices per prompt are as many engine requests, each holding a queue slot: a completion of
P prompts has P * n choices, choice prompt_index * n + j; streamed, each chunk names its choice
(`index`), each choice ends with its own finish_reason, and usage counts each prompt once.

Completions with `echo` and `logprobs` score the prompt too (its first token has none), and
`max_tokens: 0` with `echo` scores the prompt alone: what evaluation harnesses ask a server for."""

from __future__ import annotations

import functools
import time
from dataclasses import replace

from fastapi import APIRouter, Depends, Request

from shardserve.engine.request import FinishReason, RequestOutput
from shardserve.engine.sampling_params import SamplingParams
from shardserve.serving import openai_logprobs as olp
from shardserve.serving import openai_protocol as oa
from shardserve.serving.auth import require_api_key
from shardserve.serving.chat import chat_prompt_ids
from shardserve.serving.generation import respond
from shardserve.serving.http_errors import bad_request
from shardserve.serving.model_store import ServedModel
from shardserve.serving.tool_calls import tool_use

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["openai"])


@router.get("/models")
async def list_models(request: Request) -> dict:
    store = request.app.state.ctx.store
    data = [
        {"id": m.name, "object": "model", "created": int(time.time()), "owned_by": "shardserve",
         "ready": m.ready}
        for m in list(store.models.values())
    ]
    return {"object": "list", "data": data}


@router.post("/completions")
async def completions(body: oa.CompletionRequest, request: Request):
    model = _generation_model(request, body.model)
    prompts = _prompts(body.prompt)
    tokenizer = model.engine.tokenizer
    want_logprobs = body.logprobs is not None
    # echo with logprobs: the prompt's tokens get theirs too (prompt_logprobs), as in vLLM; what
    # evaluation harnesses score a text by. max_tokens 0 with echo: the prompt alone (OpenAI's
    # legacy completions); the engine generates one token, which the answer leaves out.
    prompt_logprobs = body.logprobs if body.echo and want_logprobs else None
    score_only = body.echo and body.max_tokens == 0
    view = _prompt_only if score_only else (lambda out: out)

    @functools.cache  # once per max_tokens: the prompts' params differ only by max_tokens null's
    def choice_params(max_tokens: int) -> list[SamplingParams]:
        choices = body.choice_params(body.sampling_params(
            max_tokens, want_logprobs, top_logprobs=body.logprobs or 0, top_logprobs_field="logprobs",
            defaults=model.sampling_defaults))
        # The prompt is scored once, by its first choice; its n choices echo that.
        return [replace(choices[0], prompt_logprobs=prompt_logprobs), *choices[1:]]

    def prompt_params(ids: list[int]) -> list[SamplingParams]:
        if score_only:
            _check_scoring(model, len(ids), body.min_tokens)
        max_tokens = 1 if score_only else body.max_tokens  # omitted: the schema's default, OpenAI's 16
        if max_tokens is None:  # an explicit null (vLLM): as much as the context leaves, as on chat
            max_tokens = _default_max_tokens(model, len(ids))
        return choice_params(max_tokens)

    echoed: dict[int, dict] = {}  # prompt index -> its echoed logprobs, from its first choice

    def logprobs(k: int, out, token_ids, values, tops, offsets, first: bool) -> dict | None:
        """Choice k's logprobs of these tokens, after the prompt's when it is echoed (in the first
        chunk of a stream). Choices come in order, so a prompt's first choice builds its part."""
        if not want_logprobs:
            return None
        part = olp.completion_logprobs(tokenizer, token_ids, values, tops, offsets)
        if not first or prompt_logprobs is None:
            return part
        if k // n not in echoed:
            echoed[k // n] = olp.echo_logprobs(tokenizer, out, encoded[k // n][1])
        return olp.joined(echoed[k // n], part)

    body.check_supported()  # n among the rest, before the queue is asked for n slots a prompt
    _check_capacity(model, len(prompts), body.choices)
    # n choices per prompt, prompt by prompt: choice k answers prompt k // n
    n = body.choices
    # A text prompt is encoded here, once: its length bounds max_tokens null and 0, and its n
    # choices' engine requests take the ids (with echoed logprobs, its offsets come along).
    encoded = [_encoded(p, tokenizer, prompt_logprobs is not None) for p in prompts]  # ids, offsets
    params = [q for ids, _ in encoded for q in prompt_params(ids)]
    echoes = [_echo(p, tokenizer) if body.echo else "" for p in prompts]  # each choice's own prompt
    rid, name = oa.new_id("cmpl"), model.name
    streams = oa.ChoiceStreams(body, "text_completion", rid, name, len(params))  # when streamed

    def choice(k: int, text: str, out, logprobs: dict | None) -> dict:
        return {"index": k, "text": text, "finish_reason": oa.openai_finish_reason(out.finish_reason),
                "logprobs": logprobs}

    def events_of(k: int):
        echo = echoes[k // n]

        def to_events(out, first):
            out = view(out)
            prefix = echo if first else ""  # the choice's first chunk
            offsets = olp.text_offsets(out, len(echo), before=streams.text_ends[k])
            lp = logprobs(k, out, out.delta_token_ids, out.new_entries(out.logprobs) or [],
                          out.new_entries(out.top_logprobs), offsets, first)
            streams.add(k, out)
            event = oa.envelope("text_completion", rid, name, [choice(k, prefix + out.delta_text, out, lp)])
            return [streams.with_usage(k, event)]

        return to_events

    def to_body(finals):
        finals = [view(out) for out in finals]
        choices = []
        for k, out in enumerate(finals):
            prefix = echoes[k // n]
            lp = logprobs(k, out, out.token_ids, out.logprobs or [], out.top_logprobs,
                          olp.text_offsets(out, len(prefix)), True)
            choices.append(choice(k, prefix + out.text, out, lp))
        return oa.envelope("text_completion", rid, name, choices, {"usage": oa.usage(finals, n)})

    return await respond(request, model, [ids for ids, _ in encoded for _k in range(n)], params, stream=body.stream,
                         sse=True, to_events=[events_of(k) for k in range(len(params))], to_body=to_body,
                         closing_events=streams.closing, done_marker=True, names=oa.FIELD_NAMES)


@router.post("/chat/completions")
async def chat_completions(body: oa.ChatCompletionRequest, request: Request):
    model = _generation_model(request, body.model)
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request("response_format: only text is supported", "response_format")
    tokenizer = model.engine.tokenizer
    use = tool_use(body.tools, body.tool_choice, model.config)
    body.check_supported()
    _check_capacity(model, 1, body.choices)  # before the template is rendered and tokenized
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    prompt = chat_prompt_ids(tokenizer, messages, use.tools)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(body, field)
    if max_tokens is None:  # OpenAI's default: as much as the context leaves
        max_tokens = _default_max_tokens(model, len(prompt))
    params = [use.adjust(p) for p in body.choice_params(body.sampling_params(
        max_tokens, body.logprobs, field, top_logprobs=body.top_logprobs or 0, defaults=model.sampling_defaults))]
    rid, name = oa.new_id("chatcmpl"), model.name
    streams = oa.ChoiceStreams(body, "chat.completion.chunk", rid, name, len(params))  # when streamed

    def logprobs(ids, lps, tops):
        return olp.chat_logprobs(tokenizer, ids, lps or [], tops) if body.logprobs else None

    def chunk(j: int, delta: dict, finish_reason: str | None = None, lp: dict | None = None) -> dict:
        return oa.envelope("chat.completion.chunk", rid, name, [
            {"index": j, "delta": delta, "finish_reason": finish_reason, "logprobs": lp}])

    def events_of(j: int):
        pending = olp.PendingTokens()  # the tokens that sent no chunk yet
        tools = use.stream()  # its text -> content and tool call deltas

        def to_events(out, first):
            events = [chunk(j, {"role": "assistant", "content": ""})] if first else []
            pending.add(out)
            # Without text (held back) the update sends no chunk: its tokens go with the next one.
            delta, reason = tools.step(out.delta_text, out.finished, oa.openai_finish_reason(out.finish_reason))
            if delta or out.finished:
                events.append(chunk(j, delta, reason, logprobs(*pending.take())))
            streams.add(j, out)
            return [streams.with_usage(j, e) for e in events]

        return to_events

    def to_body(finals):
        choices = []
        for j, out in enumerate(finals):
            message, reason = use.message(out.text, oa.openai_finish_reason(out.finish_reason))
            choices.append({"index": j, "message": message, "finish_reason": reason,
                            "logprobs": logprobs(out.token_ids, out.logprobs, out.top_logprobs)})
        return oa.envelope("chat.completion", rid, name, choices, {"usage": oa.usage(finals, len(finals))})

    return await respond(request, model, [prompt] * len(params), params, stream=body.stream, sse=True,
                         to_events=[events_of(j) for j in range(len(params))], to_body=to_body,
                         closing_events=streams.closing, done_marker=True,
                         names=oa.FIELD_NAMES | {"max_new_tokens": field, "prompt": "messages"})


def _generation_model(request: Request, name: str | None) -> ServedModel:
    store = request.app.state.ctx.store
    if name is None:
        if len(store.models) != 1:
            raise bad_request(f"model: required when several models are served ({sorted(store.models)})", "model")
        model = store.default()
    else:
        model = store.get(name)
    model.require_ready()
    if model.kind != "generate":
        raise bad_request(f"model: {name!r} is served by a custom handler (model.py); use /invocations", "model")
    return model


def _prompts(prompt) -> list:
    """str | [str] | [int] | [[int]] -> a list of prompts (text or token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt: must not be empty", "prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def _encoded(prompt, tokenizer, offsets: bool) -> tuple[list[int], list[int] | None]:
    """A prompt's token ids (a text one's encoded) and, with `offsets`, where each token's text
    starts in a text prompt when its encoding says (openai_logprobs.encode_text)."""
    if isinstance(prompt, str):
        return olp.encode_text(tokenizer, prompt, offsets)
    return prompt, None


def _default_max_tokens(model: ServedModel, length: int) -> int:
    """max_tokens that fills the context after a prompt of `length` tokens (each prompt of a
    batch its own, as vLLM), at most the model's generation_config.json max_new_tokens; at least
    1, so a prompt too long gets the engine's own error."""
    left = max(model.engine.max_model_len - length, 1)
    return min(left, model.sampling_defaults.get("max_new_tokens", left))


def _check_scoring(model: ServedModel, length: int, min_tokens: int) -> None:
    """400s in the client's terms for a prompt of `length` tokens scored alone (max_tokens 0),
    where the engine is asked for one token: it needs a position after the prompt, and min_tokens
    cannot apply."""
    if min_tokens:
        raise bad_request(f"min_tokens: must be 0 with max_tokens 0, got {min_tokens}", "min_tokens")
    if length >= model.engine.max_model_len:
        raise bad_request(f"prompt: a prompt scored alone (max_tokens 0) takes at most max_model_len - 1 = "
                          f"{model.engine.max_model_len - 1} tokens, got {length}", "prompt")


def _check_capacity(model: ServedModel, prompts: int, n: int) -> None:
    """Admission's 400 for more prompts than the model's queue ever takes, or in n's terms when
    the prompts fit but their n choices each (an engine request apiece, a queue slot each) never
    can: before the route encodes any prompt, which a request that cannot fit need not pay for."""
    model.admission.check_fits(model.name, prompts, "prompt")
    model.admission.check_fits(model.name, prompts * n, "n",
                               f"{prompts * n} requests ({prompts} prompt(s) x {n} choices)")


def _prompt_only(out: RequestOutput) -> RequestOutput:
    """A max_tokens 0 answer: the output without its one generated token."""
    return replace(out, text="", token_ids=[], delta_text="", delta_token_ids=[], token_text_ends=[],
                   logprobs=None if out.logprobs is None else [],
                   top_logprobs=None if out.top_logprobs is None else [], finish_reason=FinishReason.LENGTH)


def _echo(prompt, tokenizer) -> str:
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
