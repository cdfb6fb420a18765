"""The HTTP server in process (FastAPI's TestClient) on tiny Llamas: request validation errors and
the DJL/TGI token stream under stop strings.

Models: "nobos" (the first, so /invocations serves it) has a tokenizer that adds no BOS, so an empty
prompt is zero tokens; "llama" keeps the tiny tokenizer's BOS.
"""

from __future__ import annotations

import json
import shutil

import pytest

from helpers.served_app import artifact, served


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    nobos = shutil.copytree(tiny_checkpoint("llama"), root / "nobos-weights")
    tokenizer = json.loads((nobos / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None  # the template that prepends <s>
    (nobos / "tokenizer.json").write_text(json.dumps(tokenizer))
    models = (("nobos", artifact(root / "nobos", nobos)), ("llama", artifact(root / "llama", tiny_checkpoint("llama"))))
    with served(models) as c:
        yield c


def _stream(client, path: str, body: dict) -> list[dict]:
    r = client.post(path, json={**body, "stream": True})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line]


def _error(r, status: int = 400) -> tuple[str, str | None]:
    """(message, param) of an error body: OpenAI's on /v1, DJL's (no param) elsewhere."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and "Traceback" not in r.text
    error = r.json()["error"]
    return (error["message"], error["param"]) if isinstance(error, dict) else (error, None)


# -- 1. DJL / TGI streams with stop strings ------------------------------------------------------

def test_a_streamed_token_event_carries_its_own_tokens_text_under_a_stop_string(client):
    """Text that may begin a stop string is held back by the engine; the event of its token is held
    with it, so each event's text is the text of its id (as TGI pairs them), cut where the stop
    string begins: the events still add up to generated_text, which excludes the stop string."""
    parameters = {"max_new_tokens": 24, "ignore_eos": True, "details": True}
    plain = _stream(client, "/predictions/llama", {"inputs": "Hello world", "parameters": parameters})
    full = plain[-1]["generated_text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]  # 3 characters: 2 held back at every step
    cut = full.index(stop)
    expected, start = [], 0
    for event in plain:  # without a stop string nothing is held back: each event is its token's
        token = event["token"]
        expected.append((token["id"], token["text"][: max(cut - start, 0)], token["log_prob"]))
        start += len(token["text"])
        if start >= cut + len(stop):  # this token completes the stop string: the last one
            break
    assert cut > 0 and len(expected) >= 3

    events = _stream(client, "/predictions/llama", {"inputs": "Hello world", "parameters": {**parameters, "stop": stop}})
    got = [(e["token"]["id"], e["token"]["text"], e["token"]["log_prob"]) for e in events]
    assert got == expected
    assert events[-1]["generated_text"] == full[:cut] == "".join(text for _, text, _ in got)
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"
    assert all(e["generated_text"] is None for e in events[:-1])


# -- 2. a body that is not UTF-8 -----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_body_that_is_not_utf8_is_a_400_saying_so_naming_the_body(client, path):
    r = client.post(path, content=b'{"model": "llama", "prompt": "caf\xe9"}', headers={"content-type": "application/json"})
    message, param = _error(r)
    assert "not valid JSON" in message and "UTF-8" in message and param == "body"
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("content", "content_type"), [
    (b"{", "application/json"), (b"null", "application/json"), (b"prompt=hi", "application/x-www-form-urlencoded"),
], ids=["truncated", "null", "form-encoded"])
def test_every_error_about_the_body_as_a_whole_names_the_body(client, content, content_type):
    _, param = _error(client.post("/v1/completions", content=content, headers={"content-type": content_type}))
    assert param == "body"


# -- 3. union-typed fields: the field's path, never Pydantic's branch labels -----------------------

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {"model": "llama", "prompt": "x", "stop": 5}, "stop"),
    ("/v1/completions", {"model": "llama", "prompt": "x", "stop": [5]}, "stop"),
    ("/v1/completions", {"model": "llama", "prompt": 1.5}, "prompt"),
    ("/v1/completions", {"model": "llama", "prompt": [[1], [1.5]]}, "prompt"),
    ("/v1/chat/completions", {**CHAT, "stop": {"a": 1}}, "stop"),
    ("/v1/chat/completions", {**CHAT, "tool_choice": 5}, "tool_choice"),
    ("/v1/chat/completions", {"model": "llama", "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
    ("/v1/chat/completions", {"model": "llama", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content"),
    ("/invocations", {"inputs": 5}, "inputs"),
    ("/invocations", {"inputs": "x", "parameters": {"stop": 5}}, "parameters.stop"),
    ("/predictions/llama", {"inputs": ["x", 1]}, "inputs"),
], ids=["stop-int", "stop-list-of-int", "prompt-float", "prompt-nested-float", "chat-stop-object",
        "tool_choice-int", "content-int", "content-part-without-text", "inputs-int", "parameters.stop-int",
        "inputs-list-with-int"])
def test_a_union_fields_error_names_its_path_without_pydantics_branch_labels(client, path, body, field):
    """The field the client wrote, not the member or branch pydantic failed in."""
    message, param = _error(client.post(path, json=body))
    assert message.split(": ", 1)[0] == field, message
    if path.startswith("/v1/"):
        assert param == field


def test_a_dict_key_that_looks_like_a_branch_label_is_kept(client):
    """metadata's keys are the user's: one spelt like a Pydantic label is part of the path."""
    message, param = _error(client.post("/v1/completions", json={"model": "llama", "prompt": "x",
                                                                  "metadata": {"str": 1}}))
    assert param == "metadata.str" and message.startswith("metadata.str: ")


# -- 4. a prompt of zero tokens -------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {"model": "nobos", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "nobos", "prompt": ["hi", ""]}, "prompt"),
    ("/invocations", {"inputs": ""}, "inputs"),
    ("/invocations", {"inputs": "", "stream": True}, "inputs"),
    ("/predictions/nobos", {"inputs": ["hi", ""]}, "inputs"),
])
def test_a_prompt_of_zero_tokens_is_a_400_naming_the_field(client, path, body, field):
    message, param = _error(client.post(path, json=body))
    assert message.startswith(field) and "empty" in message, message
    if path.startswith("/v1/"):
        assert param == field


def test_an_empty_prompt_is_generated_from_bos_when_the_tokenizer_adds_one(client):
    r = client.post("/v1/completions", json={"model": "llama", "prompt": "", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    r = client.post("/predictions/llama", json={"inputs": "", "parameters": {"max_new_tokens": 2, "ignore_eos": True,
                                                                             "details": True}})
    assert r.status_code == 200, r.text
    assert r.json()["details"]["generated_tokens"] == 2
