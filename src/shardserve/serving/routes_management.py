"""DJLServing's management API: list, describe, register and unregister models.

Served on loopback only unless an API key is set (then the key is required). Registration is
synchronous by default, as in DJLServing: the call returns when the model is ready, and a model
that fails to load is unregistered again and answered with 400 and the reason, so a bad artifact
never turns the server's /ping to 500. With synchronous=false it answers 202 at once.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from shardserve.serving.auth import require_management
from shardserve.serving.http_errors import APIError, bad_request
from shardserve.serving.model_store import ServedModel, name_problem
from shardserve.serving.model_store import model_name as default_model_name

router = APIRouter(prefix="/models", dependencies=[Depends(require_management)], tags=["management"])


@router.get("")
async def list_models(request: Request) -> dict:
    models = list(request.app.state.ctx.store.models.values())
    return {"models": [{"modelName": m.name, "modelUrl": m.location, "status": m.status()["status"]} for m in models]}


@router.get("/{name}")
async def describe_model(name: str, request: Request) -> list[dict]:
    return [_describe(request.app.state.ctx.store.get(name))]


@router.post("")
async def register_model(request: Request, url: str | None = None, model_name: str | None = None,
                         synchronous: bool = True):
    if not url:
        raise bad_request("url: the model location is required (?url=...)", "url")
    store = request.app.state.ctx.store
    name = model_name or default_model_name(url)
    _check_name(name, "model_name" if model_name else "url")
    model = store.add(name, url)
    if not synchronous:
        return JSONResponse({"status": f'Model "{name}" registration scheduled.'}, status_code=202)
    while not (model.ready or model.errored):
        await asyncio.sleep(0.05)
    if model.errored:
        store.remove(name)
        raise APIError(400, f"model {name!r} failed to load: {model.error}")
    return {"status": f'Model "{name}" registered.'}


@router.delete("/{name}")
async def unregister_model(name: str, request: Request) -> dict:
    store = request.app.state.ctx.store
    store.get(name)
    await asyncio.to_thread(store.remove, name)
    return {"status": f'Model "{name}" unregistered'}


def _check_name(name: str, field: str) -> None:
    """A 400 naming `field` (the name's source) for a name no model can have (name_problem)."""
    problem = name_problem(name)
    if problem is not None:
        raise bad_request(f"{field}: {problem}", field)


def _describe(model: ServedModel) -> dict:
    body = {"modelName": model.name, "modelUrl": model.location, "engine": model.kind, **model.status(),
            "loadSeconds": model.phase_seconds}
    if model.config is not None:
        body.update(batchSize=model.config.batch_size, maxBatchDelay=model.config.max_batch_delay_ms,
                    queueSize=model.config.job_queue_size, tensorParallelDegree=model.config.tensor_parallel_degree)
    if model.engine is not None:
        body["copies"] = [{"requests": n, "inflight": i, **e.stats()} for n, i, e in
                          zip(model.engine.served, model.engine.inflight, model.engine.engines, strict=True)]
    return body
