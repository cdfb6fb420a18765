"""Bad input: exact status codes, a JSON error naming the field, never a 500 or a traceback."""

from __future__ import annotations

import pytest
from live import MAX_BODY_BYTES

INVOCATION_CASES = [
    # (body, field the message must name)
    ({"parameters": {}}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": 5}, "inputs"),
    ({"inputs": "x", "parameters": {"temperature": "hot"}}, "parameters.temperature"),
    ({"inputs": "x", "parameters": {"temperature": -1}}, "parameters.temperature"),
    ({"inputs": "x", "parameters": {"top_p": 0}}, "parameters.top_p"),
    ({"inputs": "x", "parameters": {"top_k": -2}}, "parameters.top_k"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
    ({"inputs": "x", "parameters": {"max_new_tokens": "5"}}, "parameters.max_new_tokens"),
    ({"inputs": "x", "parameters": {"repetition_penalty": 0}}, "parameters.repetition_penalty"),
    ({"inputs": "x", "parameters": {"frequency_penalty": 3.0}}, "parameters.frequency_penalty"),
    ({"inputs": "x", "parameters": {"seed": 2**64}}, "parameters.seed"),
    ({"inputs": "x", "parameters": {"stop": [""]}}, "parameters.stop"),
    ({"inputs": "x", "parameters": {"max_new_token": 5}}, "parameters.max_new_token"),
    ({"inputs": "x", "parameters": {"details": "yes"}}, "parameters.details"),
    ({"inputs": ["a", "b"], "stream": True}, "stream"),
    ({"inputs": "x", "unknown": 1}, "unknown"),
]

COMPLETION_CASES = [
    ({"model": "llama"}, "prompt"),
    ({"model": "llama", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "llama", "prompt": "x", "temperature": -0.5}, "temperature"),
    ({"model": "llama", "prompt": "x", "top_p": 2}, "top_p"),
    ({"model": "llama", "prompt": "x", "n": 129}, "n"),
    ({"model": "llama", "prompt": "x", "presence_penalty": -2.5}, "presence_penalty"),
    ({"model": "llama", "prompt": "x", "logprobs": 21}, "logprobs"),
    ({"model": "llama", "prompt": "x", "bogus": True}, "bogus"),
    ({"model": "llama", "prompt": []}, "prompt"),
    ({"model": "llama", "prompt": [10**9]}, "prompt"),
]

CHAT_CASES = [
    ({"model": "llama", "messages": []}, "messages"),
    ({"model": "llama", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "llama", "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
    ({"model": "llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"model": "llama", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
     "max_completion_tokens"),
    ({"model": "llama", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"model": "llama", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
     "response_format"),
]


def assert_clean_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    return r.json()


@pytest.mark.parametrize(("body", "field"), INVOCATION_CASES)
def test_invocations_invalid_field_is_400_naming_it(client, body, field):
    error = assert_clean_error(client.post("/invocations", json=body), 400)
    assert field in error["error"]


@pytest.mark.parametrize(("body", "field"), COMPLETION_CASES)
def test_completions_invalid_field_is_400_openai_error(client, body, field):
    error = assert_clean_error(client.post("/v1/completions", json=body), 400)["error"]
    assert field in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400


@pytest.mark.parametrize(("body", "field"), CHAT_CASES)
def test_chat_invalid_field_is_400_openai_error(client, body, field):
    error = assert_clean_error(client.post("/v1/chat/completions", json=body), 400)["error"]
    assert field in error["message"]


def test_prompt_beyond_the_model_length_gives_both_numbers_in_the_requests_terms(client):
    error = assert_clean_error(client.post("/invocations", json={"inputs": "Hello world", "parameters": {"max_new_tokens": 300}}), 400)
    assert "parameters.max_new_tokens 300" in error["error"] and "256" in error["error"]
    long_prompt = "word " * 400
    error = assert_clean_error(client.post("/v1/completions", json={"model": "llama", "prompt": long_prompt}), 400)
    assert "max_tokens 16" in error["error"]["message"] and "max_model_len 256" in error["error"]["message"]
    assert error["error"]["param"] == "prompt"
    chat = {"model": "llama", "messages": [{"role": "user", "content": "Hello"}], "max_completion_tokens": 300}
    error = assert_clean_error(client.post("/v1/chat/completions", json=chat), 400)["error"]
    assert "max_completion_tokens 300" in error["message"] and error["param"] == "messages"
    error = assert_clean_error(client.post("/predictions/gpt2", json={"inputs": long_prompt}), 400)
    assert "max_model_len 256" in error["error"]


def test_a_batch_larger_than_the_model_ever_takes_is_400_not_503(server, client):
    capacity = server.store.get("llama").admission.capacity
    body = {"model": "llama", "prompt": ["Hi"] * (capacity + 1), "max_tokens": 1}
    error = assert_clean_error(client.post("/v1/completions", json=body), 400)["error"]
    assert error["param"] == "prompt" and str(capacity + 1) in error["message"]
    error = assert_clean_error(client.post("/invocations", json={"inputs": ["Hi"] * (capacity + 1)}), 400)
    assert "inputs" in error["error"]


@pytest.mark.parametrize("path", ["/invocations", "/v1/completions", "/v1/chat/completions", "/predictions/llama"])
@pytest.mark.parametrize("payload", [b"{", b"", b"\xff\xfe", b"[1, 2", b"null"])
def test_malformed_json_is_400(client, path, payload):
    r = client.post(path, content=payload, headers={"content-type": "application/json"})
    assert_clean_error(r, 400)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_body_not_sent_as_json_says_so(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/completions", content=b"prompt=hi", headers=headers)
    error = assert_clean_error(r, 400)["error"]
    assert "content-type application/json" in error["message"] and repr(content_type or "none") in error["message"]


def test_body_over_the_limit_is_413_with_or_without_content_length(client):
    big = b'{"inputs": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}'
    assert_clean_error(client.post("/invocations", content=big), 413)

    def chunked():  # no Content-Length: the server counts as it reads
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    assert_clean_error(client.post("/v1/completions", content=chunked()), 413)


def test_unknown_model_is_404(client):
    assert_clean_error(client.post("/predictions/nope", json={"inputs": "x"}), 404)
    error = assert_clean_error(client.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)
    assert error["error"]["param"] == "model"
    assert_clean_error(client.get("/models/nope"), 404)
    assert_clean_error(client.get("/no/such/route"), 404)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/invocations"), ("PUT", "/v1/completions"), ("GET", "/v1/chat/completions"),
    ("DELETE", "/ping"), ("POST", "/metrics"), ("PATCH", "/models"),
])
def test_wrong_method_is_405(client, method, path):
    assert_clean_error(client.request(method, path), 405)
