"""The OpenAI routes in process (FastAPI's TestClient) on a tiny Llama: streamed logprobs under
held-back text, max_tokens null, and the sampling fields as vLLM's clients send them."""

from __future__ import annotations

import json

import pytest

from helpers.served_app import artifact, served

MAX_MODEL_LEN = 256  # the tiny Llama's positions
CHAT = {"model": "llama", "messages": [{"role": "user", "content": "Tell me a story"}]}
COMPLETION = {"model": "llama", "prompt": "Once upon a time"}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    with served((("llama", artifact(tmp_path_factory.mktemp("openai") / "llama", tiny_checkpoint("llama"))),)) as c:
        yield c


def _post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _sse(client, path: str, body: dict) -> list[dict]:
    r = client.post(path, json={**body, "stream": True})
    assert r.status_code == 200, r.text
    data = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def _error(r) -> tuple[str, str | None]:
    assert r.status_code == 400, r.text
    return r.json()["error"]["message"], r.json()["error"]["param"]


def _with_stop(client, path: str, body: dict, text_of) -> dict:
    """`body` with a stop string of 8 characters from the middle of its greedy answer: 7 of them
    are held back at each step, so several updates have tokens but no text."""
    full = text_of(_post(client, path, body))
    stop = full[len(full) // 3: len(full) // 3 + 8]
    assert len(stop) == 8, full
    return {**body, "stop": [stop]}


# -- 1. streamed logprobs add up to the unstreamed answer's, with text held back -----------------

def test_streamed_chat_logprobs_include_the_tokens_of_held_back_text(client):
    path = "/v1/chat/completions"
    body = _with_stop(client, path, {**CHAT, "max_tokens": 32, "temperature": 0.0, "ignore_eos": True,
                                     "logprobs": True}, lambda r: r["choices"][0]["message"]["content"])
    plain = _post(client, path, body)
    chunks = _sse(client, path, body)
    choices = [c for chunk in chunks for c in chunk["choices"]]
    streamed = [entry for c in choices if c["logprobs"] for entry in c["logprobs"]["content"]]
    assert plain["choices"][0]["finish_reason"] == "stop" and plain["usage"]["completion_tokens"] >= 3
    assert len(streamed) == plain["usage"]["completion_tokens"]
    assert streamed == plain["choices"][0]["logprobs"]["content"]
    assert "".join(c["delta"].get("content", "") for c in choices) == plain["choices"][0]["message"]["content"]


def test_streamed_completion_logprobs_include_the_tokens_of_held_back_text(client):
    path = "/v1/completions"
    body = _with_stop(client, path, {**COMPLETION, "max_tokens": 32, "temperature": 0.0, "ignore_eos": True,
                                     "logprobs": 0}, lambda r: r["choices"][0]["text"])
    plain = _post(client, path, body)["choices"][0]
    choices = [c for chunk in _sse(client, path, body) for c in chunk["choices"]]
    for key in ("tokens", "token_logprobs"):
        assert [x for c in choices for x in c["logprobs"][key]] == plain["logprobs"][key]
    assert "".join(c["text"] for c in choices) == plain["text"]


# -- 2. max_tokens: null fills the context; omitted is 16 ----------------------------------------

def test_completion_max_tokens_null_fills_the_context_and_omitted_is_16(client):
    body = {**COMPLETION, "temperature": 0.0, "ignore_eos": True}
    filled = _post(client, "/v1/completions", {**body, "max_tokens": None})
    assert filled["usage"]["total_tokens"] == MAX_MODEL_LEN
    assert filled["choices"][0]["finish_reason"] == "length"
    assert _post(client, "/v1/completions", body)["usage"]["completion_tokens"] == 16
    # a batch shares one max_tokens: the longest prompt's
    batch = _post(client, "/v1/completions", {**body, "prompt": [[1, 5], [5] * 100], "max_tokens": None})
    assert [c["finish_reason"] for c in batch["choices"]] == ["length", "length"]
    assert batch["usage"]["completion_tokens"] == 2 * (MAX_MODEL_LEN - 100)


# -- 3. top_k: -1 disables, as 0 does -------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_top_k_minus_one_disables_top_k_like_zero(client, path, body):
    body = {**body, "max_tokens": 8, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    disabled = _post(client, path, {**body, "top_k": 0})
    assert _post(client, path, {**body, "top_k": -1})["choices"] == disabled["choices"]
    message, param = _error(client.post(path, json={**body, "top_k": -2}))
    assert param == "top_k" and "top_k" in message and "-2" in message


# -- 4. any 64-bit seed, negative ones included ---------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_a_negative_seed_is_accepted_and_reproducible(client, path, body):
    body = {**body, "max_tokens": 8, "temperature": 1.0, "ignore_eos": True}
    first = _post(client, path, {**body, "seed": -1})
    assert _post(client, path, {**body, "seed": -1})["choices"] == first["choices"]
    for seed in (-2**63, 2**64 - 1):
        _post(client, path, {**body, "seed": seed})
    message, param = _error(client.post(path, json={**body, "seed": 2**64}))
    assert param == "seed" and "2^64" in message


# -- 5. stream_options needs stream: true ---------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_stream_options_without_stream_is_a_400_naming_it(client, path, body):
    body = {**body, "max_tokens": 2, "ignore_eos": True, "stream_options": {"include_usage": True}}
    for stream in ({}, {"stream": False}):
        message, param = _error(client.post(path, json={**body, **stream}))
        assert param == "stream_options" and message.startswith("stream_options")
    assert _post(client, path, {**body, "stream_options": None})["usage"]["completion_tokens"] == 2
    chunks = _sse(client, path, body)  # with stream: true it is honoured
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
