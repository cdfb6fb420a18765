"""/metrics and the published OpenAPI schema."""

from __future__ import annotations

METRICS = (
    "shardserve_requests_total", "shardserve_queue_depth", "shardserve_running_requests",
    "shardserve_time_to_first_token_seconds", "shardserve_inter_token_latency_seconds",
    "shardserve_e2e_request_latency_seconds", "shardserve_prompt_tokens_total",
    "shardserve_generation_tokens_total", "shardserve_kv_cache_usage_ratio", "shardserve_model_ready",
)


def test_metrics_cover_requests_latency_tokens_cache_and_load_phases(client):
    assert client.post("/invocations", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}).status_code == 200
    assert client.post("/invocations", json={"inputs": 1}).status_code == 400
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in METRICS:
        assert f"\n{name}" in text, name
    assert 'shardserve_requests_total{code="400",route="/invocations"}' in text
    assert 'shardserve_requests_total{code="200",route="/invocations"}' in text
    for phase in ("downloading", "loading", "warm-up"):
        assert f'shardserve_model_load_phase_seconds{{model="llama",phase="{phase}"}}' in text
    assert 'shardserve_model_ready{model="llama"} 1.0' in text


def test_openapi_schema_documents_every_route(client):
    schema = client.get("/openapi.json").json()
    for path in ("/ping", "/invocations", "/predictions/{model_name}", "/models", "/models/{name}",
                 "/v1/completions", "/v1/chat/completions", "/v1/models", "/metrics"):
        assert path in schema["paths"], path
    body = schema["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/GenerateRequest"}
    components = schema["components"]["schemas"]
    assert {"GenerateRequest", "GenerateParameters", "CompletionRequest", "ChatCompletionRequest"} <= set(components)
    assert "max_new_tokens" in components["GenerateParameters"]["properties"]
