"""SageMaker / DJLServing routes: the TGI/DJL schema, streaming, custom handlers, Accelerate."""

from __future__ import annotations

import json

import pytest
import torch

GREEDY = {"max_new_tokens": 6, "ignore_eos": True}


def generate(client, body: dict, path: str = "/invocations", **kw):
    return client.post(path, json=body, **kw)


def test_invocations_serves_the_first_model_with_details(client):
    r = generate(client, {"inputs": "Hello world", "parameters": {**GREEDY, "details": True}})
    assert r.status_code == 200
    body = r.json()
    details = body["details"]
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 6 == len(details["tokens"])
    assert "".join(t["text"] for t in details["tokens"]) == body["generated_text"]
    assert all(t["log_prob"] <= 0 for t in details["tokens"])


def test_batch_inputs_answer_a_list_in_order(client):
    alone = [generate(client, {"inputs": p, "parameters": GREEDY}).json()["generated_text"] for p in ("Hi", "Once upon")]
    r = generate(client, {"inputs": ["Hi", "Once upon"], "parameters": GREEDY}, "/predictions/llama")
    assert r.status_code == 200
    assert [b["generated_text"] for b in r.json()] == alone


def test_return_full_text_and_do_sample_seed(client):
    full = generate(client, {"inputs": "Hello", "parameters": {**GREEDY, "return_full_text": True}}).json()
    assert full["generated_text"].startswith("Hello")
    sampled = {"do_sample": True, "temperature": 0.9, "top_k": 50, "seed": 7, "max_new_tokens": 8}
    a = generate(client, {"inputs": "Hello", "parameters": sampled}).json()["generated_text"]
    b = generate(client, {"inputs": "Hello", "parameters": sampled}).json()["generated_text"]
    assert a == b


def test_stream_json_lines_by_default_and_sse_on_request(client):
    final = generate(client, {"inputs": "Hello world", "parameters": GREEDY}).json()["generated_text"]
    with client.stream("POST", "/invocations", json={"inputs": "Hello world", "parameters": GREEDY, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/jsonlines")
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(e["token"]["text"] for e in events) == final
    assert events[-1]["generated_text"] == final
    assert all(e["generated_text"] is None for e in events[:-1])

    with client.stream("POST", "/invocations", headers={"Accept": "text/event-stream"},
                       json={"inputs": "Hello world", "parameters": GREEDY, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1]["generated_text"] == final


def test_custom_handler_gets_options_headers_and_body(client):
    r = client.post("/predictions/handler", json={"action": "echo", "x": 1})
    assert r.status_code == 200
    assert r.json() == {"greeting": "hello from serving.properties", "echo": {"action": "echo", "x": 1},
                        "content_type": "application/json"}


def test_custom_handler_errors_are_424(client):
    r = client.post("/predictions/handler", json={"action": "fail"})
    assert r.status_code == 424
    assert r.json() == {"code": 424, "message": "prediction failure", "error": "the input was not understood"}
    raised = client.post("/predictions/handler", json={"action": "raise"})
    assert raised.status_code == 424
    assert "boom" in raised.json()["error"] and "Traceback" not in raised.text


def test_custom_handler_streams(client):
    with client.stream("POST", "/predictions/handler", json={"action": "stream", "n": 5}) as r:
        assert r.status_code == 200
        assert [json.loads(line) for line in r.iter_lines() if line] == [{"i": i} for i in range(5)]


@pytest.mark.parametrize("penalties", [{}, {"presence_penalty": 1.5, "frequency_penalty": 2.0}])
def test_accelerate_engine_serves_gpt2_like_transformers(client, gpt2_dir, penalties):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shardserve.serving.accelerate_sampling import OutputPenalties

    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 12, "details": True, **penalties}}
    r = generate(client, body, "/predictions/gpt2")
    assert r.status_code == 200
    ids = [t["id"] for t in r.json()["details"]["tokens"]]
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    prompt = tokenizer("Hello world", return_tensors="pt").input_ids
    processor = OutputPenalties(prompt.shape[1], penalties.get("presence_penalty", 0.0),
                                penalties.get("frequency_penalty", 0.0))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=len(ids), do_sample=False, eos_token_id=None,
                                  logits_processor=[processor])
    assert ids == expected[0, prompt.shape[1]:].tolist()
    if penalties:  # the penalties changed the text (else this case would test nothing)
        plain = generate(client, {"inputs": "Hello world", "parameters": {"max_new_tokens": 12, "details": True}},
                         "/predictions/gpt2")
        assert [t["id"] for t in plain.json()["details"]["tokens"]] != ids


def test_accelerate_engine_batches_concurrent_requests(server):
    import asyncio

    import httpx

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
            return await asyncio.gather(*(c.post("/predictions/gpt2", json=body) for _ in range(4)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.json()["generated_text"] for r in responses}) == 1  # greedy: same text batched or not


def test_requirements_txt_is_installed_for_the_handler(client, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from helpers.wheels import tiny_wheel

    monkeypatch.setenv("SERVING_DOWNLOAD_DIR", str(tmp_path / "cache"))
    artifact = tmp_path / "withdeps"
    artifact.mkdir()
    shutil.copy(Path(__file__).parent / "handlers" / "uses_dependency.py", artifact / "model.py")
    wheel = tiny_wheel(artifact, name="tinydep_e2e", value=7)
    (artifact / "requirements.txt").write_text(f"--no-index\n./{wheel}\n")
    r = client.post("/models", params={"url": str(artifact), "model_name": "withdeps", "synchronous": "true"})
    assert r.status_code == 200, r.text
    try:
        r = client.post("/predictions/withdeps", json={})
        assert r.status_code == 200 and r.json() == {"value": 7}
    finally:
        client.delete("/models/withdeps")
