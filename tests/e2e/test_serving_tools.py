"""OpenAI tool calling through the server (serving/tool_calls.py wired into the chat route).

A tiny random model never writes a real tool call, so the parser is swapped for one that reads a
call from the 4th character on, whatever the text: the route's handling (messages, finish
reasons, streamed deltas, logprobs, n choices) is what is tested here; the real parsers are
tested on their formats in tests/unit/serving/test_tool_calls.py."""

from __future__ import annotations

import json

import pytest

from helpers.served_app import post_ok, served, sse_chunks
from shardserve.serving import tool_calls
from shardserve.serving.tool_parsers import ToolCall, ToolParser

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
BODY = {"model": "llama", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12,
        "temperature": 0.0, "ignore_eos": True}


class CallFromTheFourthCharacter(ToolParser):
    name, marker = "hermes", "<tool_call>"

    def start(self, text: str) -> int | None:
        return 3 if len(text) > 3 else None

    def hold(self, text: str) -> int:
        return len(text)  # nothing goes out before the 4th character decides

    def _calls(self, body: str) -> list[ToolCall]:
        return [ToolCall(self.new_id(), "get_weather", json.dumps({"body": body}))]


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "llama"
    path.mkdir()
    (path / "serving.properties").write_text(
        f"engine=Python\noption.model_id={tiny_checkpoint('llama')}\n"
        "option.enable_auto_tool_choice=true\noption.tool_call_parser=hermes\n")
    with served((("llama", str(path)),)) as c:
        yield c


@pytest.fixture
def plain_text(client) -> str:
    answer = post_ok(client, "/v1/chat/completions", BODY)["choices"][0]
    assert answer["finish_reason"] == "length" and "tool_calls" not in answer["message"]
    return answer["message"]["content"]


def test_random_text_holds_no_call_for_the_real_parser(client, plain_text):
    answer = post_ok(client, "/v1/chat/completions", {**BODY, "tools": [WEATHER]})["choices"][0]
    assert answer["message"] == {"role": "assistant", "content": plain_text} and answer["finish_reason"] == "length"


def test_calls_come_back_whole_and_streamed(client, plain_text, monkeypatch):
    monkeypatch.setitem(tool_calls.PARSERS, "hermes", CallFromTheFourthCharacter())
    answer = post_ok(client, "/v1/chat/completions", {**BODY, "tools": [WEATHER], "n": 2})
    for choice in answer["choices"]:
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == plain_text[:3]
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"body": plain_text[3:]}
    chunks = sse_chunks(client, "/v1/chat/completions", {**BODY, "tools": [WEATHER], "logprobs": True})
    choices = [c for chunk in chunks for c in chunk["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == plain_text[:3]
    [call] = [t for c in choices for t in c["delta"].get("tool_calls", [])]
    assert call["index"] == 0 and json.loads(call["function"]["arguments"]) == {"body": plain_text[3:]}
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert sum(len(c["logprobs"]["content"]) for c in choices if c["logprobs"]) == 12  # no token lost
    unparsed = post_ok(client, "/v1/chat/completions", {**BODY, "tools": [WEATHER], "tool_choice": "none"})
    assert unparsed["choices"][0]["message"]["content"] == plain_text


def test_a_conversation_with_a_call_and_its_result_renders(client):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bath"}'}}
    turns = [BODY["messages"][0], {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    post_ok(client, "/v1/chat/completions", {**BODY, "messages": turns, "tools": [WEATHER]})
    broken = [turns[0], {**turns[1], "tool_calls": [{**call, "function": {"name": "f", "arguments": "{"}}]}]
    r = client.post("/v1/chat/completions", json={**BODY, "messages": broken})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.1.tool_calls.0.function.arguments"


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools.0.function.name"),
])
def test_what_cannot_be_served_is_a_400_naming_it(client, extra, param):
    r = client.post("/v1/chat/completions", json={**BODY, "tools": [WEATHER], **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
