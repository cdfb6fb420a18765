"""OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions (SSE streams that
end with `data: [DONE]`, `usage` on every answer and, with stream_options.include_usage, as a
last chunk)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from shardserve.serving import openai_logprobs as olp
from shardserve.serving import openai_protocol as oa
from shardserve.serving.auth import require_api_key
from shardserve.serving.chat import chat_prompt_ids
from shardserve.serving.generation import respond
from shardserve.serving.http_errors import bad_request
from shardserve.serving.model_store import ServedModel

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
    if body.stream and len(prompts) != 1:
        raise bad_request("prompt: streaming takes a single prompt", "prompt")
    tokenizer = model.engine.tokenizer
    max_tokens = body.max_tokens  # omitted: the schema's default, OpenAI's 16
    if max_tokens is None:  # an explicit null (vLLM): as much as the context leaves, as on chat
        max_tokens = _context_left(model, prompts, tokenizer)
    want_logprobs = body.logprobs is not None
    params = body.sampling_params(max_tokens, want_logprobs, top_logprobs=body.logprobs or 0,
                                  top_logprobs_field="logprobs")
    rid, name = oa.new_id("cmpl"), model.name

    def choice(i: int, text: str, out, logprobs: dict | None) -> dict:
        return {"index": i, "text": text, "finish_reason": oa.openai_finish_reason(out.finish_reason),
                "logprobs": logprobs}

    stream_echo = _echo(prompts[0], tokenizer) if body.stream and body.echo else ""  # the first chunk's

    def to_events(out, first):
        prefix = stream_echo if first else ""
        lp = olp.completion_logprobs(tokenizer, out.delta_token_ids, olp.delta_logprobs(out), olp.delta_top_logprobs(out),
                                    olp.text_offsets(out, len(stream_echo), new_only=True)) if want_logprobs else None
        event = oa.envelope("text_completion", rid, name, [choice(0, prefix + out.delta_text, out, lp)])
        return [_with_usage(event, out, body)]

    def to_body(finals):
        choices = []
        for i, (p, out) in enumerate(zip(prompts, finals, strict=True)):
            prefix = _echo(p, tokenizer) if body.echo else ""
            lp = olp.completion_logprobs(tokenizer, out.token_ids, out.logprobs or [], out.top_logprobs,
                                        olp.text_offsets(out, len(prefix))) if want_logprobs else None
            choices.append(choice(i, prefix + out.text, out, lp))
        return oa.envelope("text_completion", rid, name, choices, {"usage": _sum_usage(finals)})

    return await respond(request, model, prompts, params, stream=body.stream, sse=True, to_events=to_events,
                         to_body=to_body, closing_events=lambda out: _usage_chunk("text_completion", rid, name, out, body),
                         done_marker=True, names=oa.FIELD_NAMES)


@router.post("/chat/completions")
async def chat_completions(body: oa.ChatCompletionRequest, request: Request):
    model = _generation_model(request, body.model)
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request("response_format: only text is supported", "response_format")
    tokenizer = model.engine.tokenizer
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt = chat_prompt_ids(tokenizer, messages)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(body, field)
    if max_tokens is None:  # OpenAI's default: as much as the context leaves
        max_tokens = _context_left(model, [prompt], tokenizer)
    params = body.sampling_params(max_tokens, body.logprobs, field, top_logprobs=body.top_logprobs or 0)
    rid, name = oa.new_id("chatcmpl"), model.name

    def logprobs(ids, lps, tops):
        return olp.chat_logprobs(tokenizer, ids, lps or [], tops) if body.logprobs else None

    pending = olp.PendingTokens()

    def to_events(out, first):
        events = []
        if first:
            events.append(oa.envelope("chat.completion.chunk", rid, name, [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}]))
        pending.add(out)
        if out.delta_text or out.finished:  # else its text is held back: its tokens go with the next chunk
            choice = {"index": 0, "delta": {"content": out.delta_text} if out.delta_text else {},
                      "finish_reason": oa.openai_finish_reason(out.finish_reason),
                      "logprobs": logprobs(*pending.take())}
            events.append(oa.envelope("chat.completion.chunk", rid, name, [choice]))
        return [_with_usage(e, out, body) for e in events]

    def to_body(finals):
        out = finals[0]
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text},
                  "finish_reason": oa.openai_finish_reason(out.finish_reason),
                  "logprobs": logprobs(out.token_ids, out.logprobs, out.top_logprobs)}
        return oa.envelope("chat.completion", rid, name, [choice], {"usage": oa.usage(out)})

    return await respond(request, model, [prompt], params, stream=body.stream, sse=True, to_events=to_events,
                         to_body=to_body, closing_events=lambda out: _usage_chunk("chat.completion.chunk", rid, name, out, body),
                         done_marker=True,
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


def _context_left(model: ServedModel, prompts: list, tokenizer) -> int:
    """max_tokens that fills the context after the longest prompt (the prompts share one
    SamplingParams); at least 1, so a prompt too long gets the engine's own error."""
    longest = max(len(tokenizer.encode(p)) if isinstance(p, str) else len(p) for p in prompts)
    return max(model.engine.max_model_len - longest, 1)


def _echo(prompt, tokenizer) -> str:
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt)


def _with_usage(event: dict, out, body) -> dict:
    """stream_options.continuous_usage_stats: usage on every chunk (vLLM's extension)."""
    if body.stream_options and body.stream_options.include_usage:
        event["usage"] = oa.usage(out) if body.stream_options.continuous_usage_stats else None
    return event


def _usage_chunk(kind: str, rid: str, name: str, out, body) -> list[dict]:
    if body.stream_options and body.stream_options.include_usage and out is not None:
        return [oa.envelope(kind, rid, name, [], {"usage": oa.usage(out)})]
    return []


def _sum_usage(finals) -> dict:
    parts = [oa.usage(out) for out in finals]
    return {key: sum(p[key] for p in parts) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
