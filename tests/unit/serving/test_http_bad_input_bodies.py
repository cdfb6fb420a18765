"""Bodies FastAPI cannot parse, bad query parameters of the management API, model names no URL
addresses, tool call arguments nested too deeply, and a stream that fails past its status line."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from helpers.served_app import error_of
from shardserve.serving.app import create_app
from shardserve.serving.chat import chat_prompt_ids
from shardserve.serving.http_errors import APIError
from shardserve.serving.settings import ServerSettings
from shardserve.serving.streaming import stream_response

JSON = {"content-type": "application/json"}
HANDLER = "from djl_python import Output\n\ndef handle(inputs):\n    return None if inputs.is_empty() else Output().add('ok')\n"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def handler_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("handler")
    (path / "serving.properties").write_text("")
    (path / "model.py").write_text(HANDLER)
    return str(path)


@pytest.fixture(scope="module")
def client(handler_dir):
    """The app serving the handler model, seen from loopback (the management API's clients)."""
    with TestClient(create_app(ServerSettings(models=(("echo", handler_dir),)), environ={}),
                    client=("127.0.0.1", 50000)) as c:
        deadline = time.monotonic() + 60
        while c.get("/ping").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


# -- bodies of valid syntax Python's JSON parser gives up on (FastAPI said only "There was an
#    error parsing the body", with no param) ---------------------------------------------------

@pytest.mark.parametrize(("content", "words"), [
    (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too deeply"),
    (b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "4300 digits"),
], ids=["nested", "long-number"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_body_python_cannot_parse_is_a_400_saying_why_naming_the_body(client, path, content, words):
    message, param = error_of(client.post(path, content=content, headers=JSON))
    assert param == "body" and words in message and "set_int_max_str_digits" not in message, message


# -- the management API's query parameters ------------------------------------------------------

@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_a_bad_query_parameter_is_a_400_naming_it_not_the_body(client, handler_dir, value):
    message, _ = error_of(client.post(f"/models?url={handler_dir}&model_name=x&synchronous={value}"))
    assert message.startswith("synchronous: ") and "content-type" not in message, message
    assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["echo"]


@pytest.mark.parametrize(("query", "field"), [
    ("model_name=a/b", "model_name"), ("model_name=a%0Ab", "model_name"), ("model_name=a%00", "model_name"),
])
def test_a_model_name_no_url_path_addresses_is_refused(client, handler_dir, query, field):
    message, _ = error_of(client.post(f"/models?url={handler_dir}&{query}"))
    assert message.startswith(f"{field}: ") and "no '/'" in message, message
    assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["echo"]


def test_a_model_name_of_other_characters_is_registered_called_and_unregistered(client, handler_dir):
    r = client.post(f"/models?url={handler_dir}&model_name=caf%C3%A9%20v1.2")
    assert r.status_code == 200, r.text
    assert client.post("/predictions/caf%C3%A9%20v1.2", content=b"hi").text == "ok"
    assert client.delete("/models/caf%C3%A9%20v1.2").status_code == 200


# -- an assistant's tool call arguments nested beyond the JSON parser ----------------------------

def test_tool_call_arguments_nested_too_deeply_are_a_400_naming_them():
    class Tokenizer:  # the route's renderer needs no model: the arguments fail before the template
        chat_template = "{{ messages }}"

    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "[" * 100000 + "]" * 100000}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    with pytest.raises(APIError) as raised:
        chat_prompt_ids(Tokenizer(), messages)
    assert raised.value.status == 400 and raised.value.param == "messages.1.tool_calls.0.function.arguments"
    assert "too deeply" in raised.value.message


# -- a stream failing past its status line --------------------------------------------------------

@pytest.mark.parametrize("sse", [True, False])
def test_an_unexpected_error_mid_stream_ends_it_with_an_error_event(sse):
    cleaned = []

    async def events():
        yield {"n": 1}
        raise RuntimeError("a bug")

    async def cleanup():
        cleaned.append(True)

    async def read() -> list[bytes]:
        response = stream_response(events(), sse, lambda e: {"error": e.message, "code": e.status}, cleanup,
                                   done_marker=sse)
        return [chunk async for chunk in response.body_iterator]

    chunks = asyncio.run(read())
    assert len(chunks) == 2 and b'"n": 1' in chunks[0]
    assert b'"code": 500' in chunks[1] and b"a bug" not in chunks[1] and b"[DONE]" not in chunks[1]
    assert cleaned == [True]
