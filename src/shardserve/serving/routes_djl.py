"""SageMaker / DJLServing inference: POST /invocations (the first model) and
POST /predictions/{model_name}.

Generation models take the DJL/TGI JSON schema (protocol.py). Custom-handler models take any
body: it is handed to `handle()` as an Input with the HTTP headers as properties, and the
Output's code, headers and content (or stream) are the response.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from shardserve.serving import protocol
from shardserve.serving.auth import require_api_key
from shardserve.serving.generation import admit, respond, until_disconnect
from shardserve.serving.handler import Input
from shardserve.serving.http_errors import APIError, bad_request, validation_message
from shardserve.serving.model_store import ServedModel
from shardserve.serving.streaming import JSONLINES, wants_sse

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["inference"])
GENERATE_ROUTES = ("/invocations", "/predictions/{model_name}")  # their body schema: app.py


@router.post("/invocations", summary="SageMaker inference on the first model")
async def invocations(request: Request):
    return await predict(request, request.app.state.ctx.store.default())


@router.post("/predictions/{model_name}", summary="DJLServing inference on a named model")
async def predictions(model_name: str, request: Request):
    return await predict(request, request.app.state.ctx.store.get(model_name))


async def predict(request: Request, model: ServedModel):
    model.require_ready()
    body = await request.body()
    if model.kind == "custom":
        return await _invoke_handler(request, model, body)
    try:
        req = protocol.GenerateRequest.model_validate_json(body)
    except ValidationError as e:
        raise bad_request(*validation_message(e, body)) from None
    prompts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not prompts:
        raise bad_request("inputs: must be a prompt or a non-empty list of prompts", "inputs")
    if req.stream and len(prompts) != 1:
        raise bad_request("stream: streaming takes a single prompt in inputs", "stream")
    params = protocol.to_sampling_params(req.parameters, model.sampling_defaults)
    tokenizer = model.engine.tokenizer
    tokens = protocol.TokenEvents(tokenizer, req.parameters.details)  # the stream's (one prompt)

    def to_events(out, first):
        return protocol.stream_events(tokens, out, prompts[0], req.parameters, params, model.eos_ids)

    def to_body(finals):
        bodies = [protocol.generated(out, prompt, req.parameters, params, tokenizer, model.eos_ids)
                  for out, prompt in zip(finals, prompts, strict=True)]
        return bodies[0] if isinstance(req.inputs, str) else bodies

    return await respond(request, model, prompts, [params] * len(prompts), stream=req.stream,
                         sse=wants_sse(request, model.config.output_formatter),
                         to_events=[to_events], to_body=to_body, names=protocol.DJL_NAMES)


async def _invoke_handler(request: Request, model: ServedModel, body: bytes):
    release = admit(model)
    properties = {_header_name(k): v for k, v in request.headers.items()}
    call = model.handler.start(Input.from_request(body, properties), on_finished=release)
    timeout = model.config.predict_timeout_s
    try:
        output = await until_disconnect(request, asyncio.wait_for(call.output(), timeout))
    except TimeoutError:
        call.cancel()
        raise APIError(504, f"the handler did not answer within option.predict_timeout ({timeout:g} s)") from None
    except BaseException:
        call.cancel()
        raise
    status = output.code if isinstance(output.code, int) and 100 <= output.code <= 599 else 500
    headers = {k: str(v) for k, v in output.properties.items() if k.lower() not in ("content-type", "content-length")}
    if output.stream_content is not None:
        return StreamingResponse(call.items(), status_code=status, headers=headers,
                                 media_type=output.content_type() or JSONLINES)
    content = output.body()
    return Response(content, status_code=status, headers=headers, media_type=output.content_type() or _guess_type(content))


def _header_name(name: str) -> str:
    """content-type -> Content-Type: how DJLServing hands HTTP headers to handlers."""
    return "-".join(part.capitalize() for part in name.split("-"))


def _guess_type(content: bytes) -> str:
    return "application/json" if content.lstrip()[:1] in (b"{", b"[", b'"') else "text/plain; charset=utf-8"
