"""The FastAPI application: health, metrics, and the inference and management routers.

Models register at startup and load in the background: the server listens at once and /ping
reports each model's phase until all are ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from shardserve import __version__
from shardserve.serving import routes_djl, routes_management, routes_openai
from shardserve.serving.generation import ClientDisconnected
from shardserve.serving.http_errors import install_error_handlers
from shardserve.serving.metrics import ServerMetrics
from shardserve.serving.middleware import ServingMiddleware
from shardserve.serving.model_store import ModelStore
from shardserve.serving.protocol import GenerateRequest
from shardserve.serving.settings import ServerContext, ServerSettings

CLIENT_CLOSED = 499  # nginx's code for "the client went away"; only logs and metrics see it


def create_app(settings: ServerSettings, environ: Mapping[str, str] | None = None) -> FastAPI:
    metrics = ServerMetrics()
    store = ModelStore(on_phase=metrics.record_load_phase, environ=environ)
    metrics.watch_models(lambda: list(store.models.values()))
    ctx = ServerContext(settings, store, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for name, location in settings.models:
            store.add(name, location)
        yield
        await asyncio.to_thread(store.shutdown)

    app = FastAPI(title="shardserve", version=__version__, lifespan=lifespan,
                  description="DJLServing/SageMaker-compatible LLM server with an OpenAI API")
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_exception_handler(ClientDisconnected, lambda request, exc: Response(status_code=CLIENT_CLOSED))
    app.add_middleware(ServingMiddleware, ctx=ctx)
    app.include_router(routes_djl.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_management.router)

    @app.get("/ping", tags=["health"], summary="SageMaker health: 200 ready, 503 loading, 500 failed")
    async def ping(request: Request):
        if ctx.lifecycle.draining:
            return JSONResponse({"status": "Draining"}, status_code=503)
        code, body = ctx.store.health()
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus_metrics():
        payload, content_type = ctx.metrics.render()
        return Response(payload, media_type=content_type)

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the JSON body of the routes that read their body themselves
    (they also accept any body for custom handlers)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["GenerateRequest"] = body
        for path in routes_djl.GENERATE_ROUTES:
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}},
            }
        app.openapi_schema = schema
    return app.openapi_schema
