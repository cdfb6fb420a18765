"""Bad values in the fields of generation requests, on the server in process (a tiny Llama): each is
a 400 naming its field, never a 500, and never an engine stopped for every other request."""

from __future__ import annotations

import json

import pytest

from helpers.served_app import artifact, error_of, post_ok, served

JSON = {"content-type": "application/json"}
COMPLETION = {"model": "llama", "prompt": "Hello", "max_tokens": 2}
CHAT = {"model": "llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-fields")
    with served((("llama", artifact(root / "llama", tiny_checkpoint("llama"))),)) as c:
        yield c


def _post_ascii(client, path: str, body: dict):
    """The body as JSON with \\u escapes, the only way JSON carries a lone surrogate."""
    return client.post(path, content=json.dumps(body, ensure_ascii=True).encode(), headers=JSON)


# -- top_k beyond int64: the engine's sampler failed, and the engine stopped for everyone --------

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {**COMPLETION, "top_k": 10**30}, "top_k"),
    ("/v1/chat/completions", {**CHAT, "top_k": 2**63, "stream": True}, "top_k"),
    ("/predictions/llama", {"inputs": "Hello", "parameters": {"top_k": 2**63}}, "parameters.top_k"),
])
def test_a_top_k_beyond_64_bits_is_a_400_and_the_model_keeps_serving(client, path, body, field):
    message, param = error_of(client.post(path, json=body))
    assert message.startswith(f"{field} must be") and "2^63" in message, message
    if path.startswith("/v1/"):
        assert param == field
    assert client.get("/ping").status_code == 200
    post_ok(client, "/v1/completions", COMPLETION)


def test_the_largest_64_bit_top_k_still_samples_from_every_token(client):
    post_ok(client, "/v1/completions", {**COMPLETION, "top_k": 2**63 - 1, "temperature": 1.0})


# -- lone UTF-16 surrogates: Python's JSON parser lets them through, the tokenizer raised ---------

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {**COMPLETION, "prompt": "caf\ud800"}, "prompt"),
    ("/v1/completions", {**COMPLETION, "prompt": ["ok", "\udc00"], "echo": True}, "prompt.1"),
    ("/v1/completions", {**COMPLETION, "prompt": "x\udfff", "stream": True}, "prompt"),
    ("/v1/completions", {**COMPLETION, "metadata": {"k\ud800": "v"}}, "metadata.k\\ud800"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
    ("/v1/chat/completions", {**CHAT, "stream": True, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "\udbff"}]}]},
     "messages.0.content.1.text"),
    ("/v1/chat/completions", {**CHAT, "tool_choice": "none", "tools": [
        {"type": "function", "function": {"name": "f", "description": "\ud800"}}]}, "tools.0.function.description"),
])
def test_a_lone_surrogate_is_a_400_naming_where_it_is(client, path, body, field):
    message, param = error_of(_post_ascii(client, path, body))
    assert param == field and message.startswith(f"{field}: not valid Unicode"), message


def test_a_surrogate_pair_is_text(client):
    r = _post_ascii(client, "/v1/completions", {**COMPLETION, "prompt": "smile \U0001f600", "echo": True})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"].startswith("smile \U0001f600")


# -- token ids no tokenizer holds: echoing them (decode) raised before the engine saw them --------

@pytest.mark.parametrize("prompt", [[1, -1], [[5], [2**32]], [2**64]], ids=["negative", "2^32", "2^64"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_echoed_token_id_outside_u32_is_a_400_naming_the_prompt(client, prompt, stream):
    r = client.post("/v1/completions", json={**COMPLETION, "prompt": prompt, "echo": True, "stream": stream})
    message, param = error_of(r)
    assert param == "prompt" and message.startswith("prompt: token ids must be integers in [0, 2^32)"), message


def test_a_token_id_within_u32_but_beyond_the_vocabulary_gets_the_engines_400(client):
    message, param = error_of(client.post("/v1/completions", json={**COMPLETION, "prompt": [2**31], "echo": True}))
    assert param == "prompt" and "[0, 512)" in message, message


# -- logit_bias keys longer than int() reads -----------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_logit_bias_key_of_thousands_of_digits_is_a_400(client, path):
    body = {**(COMPLETION if "chat" not in path else CHAT), "logit_bias": {"1" * 5000: 1}}
    message, param = error_of(client.post(path, json=body))
    assert param == "logit_bias" and "token ids" in message and "5000 characters" in message
    assert len(message) < 300  # the key is not echoed whole


# -- null where OpenAI's API takes null ----------------------------------------------------------

@pytest.mark.parametrize(("path", "fields"), [
    ("/v1/completions", {"stream": None, "echo": None, "presence_penalty": None, "frequency_penalty": None,
                         "logprobs": None}),
    ("/v1/chat/completions", {"stream": None, "logprobs": None, "presence_penalty": None,
                              "frequency_penalty": None}),
])
def test_null_in_a_nullable_openai_field_is_its_default(client, path, fields):
    body = post_ok(client, path, {**(COMPLETION if "chat" not in path else CHAT), **fields})
    assert body["choices"][0]["logprobs"] is None and body["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("field", ["ignore_eos", "skip_special_tokens", "min_tokens"])
def test_null_stays_refused_where_neither_api_takes_it(client, field):
    message, param = error_of(client.post("/v1/completions", json={**COMPLETION, field: None}))
    assert param == field, message
