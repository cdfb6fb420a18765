"""OpenAI tool calling: the parsers on finished and streamed text, the prompt with tools and tool
messages, the serving options, and the request checks."""

from __future__ import annotations

import json
import random
import re

import pytest

from helpers.checkpoints import save_tiny_tokenizer
from shardserve.engine.sampling_params import SamplingParams
from shardserve.serving.chat import chat_prompt_ids
from shardserve.serving.http_errors import APIError
from shardserve.serving.properties import build_config, env_overrides, env_variables
from shardserve.serving.tool_calls import ToolStream, ToolUse, check_tools, tool_use
from shardserve.serving.tool_parsers import PARSERS

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
H_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'

WHOLE = object()  # the expected content is the whole text: it holds no well-formed call
# parser, text, expected content, expected [(name, arguments as a dict)]
CASES = [
    ("hermes", H_CALL, None, [("get_weather", {"city": "Paris", "days": 2})]),
    ("hermes", 'Let me look.\n' + H_CALL + '\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
     "Let me look.\n", [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})]),
    ("hermes", 'unclosed: <tool_call>{"name": "f", "arguments": {"x": [1, 2]}}', "unclosed: ", [("f", {"x": [1, 2]})]),
    ("hermes", "It is sunny in <b>Paris</b>, 21 C.", WHOLE, []),
    ("hermes", 'Hi <tool_call>{"name": "f", "arguments": {"x": 1}</tool_call>', WHOLE, []),  # malformed JSON
    ("hermes", '<tool_call>{"name": "f", "arguments": "x=1"}</tool_call>', WHOLE, []),  # not a dict
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {"n": 1}}; {"name": "b", "arguments": {"s": "é"}}',
     None, [("a", {"n": 1}), ("b", {"s": "é"})]),
    ("llama3_json", 'Sure.<|python_tag|>{"name": "a", "parameters": {}}', "Sure.", [("a", {})]),
    ("llama3_json", '  {"answer": 42}', WHOLE, []),  # JSON that is no call stays content
    ("llama3_json", '{"name": "a", "parameters": {"n": 1}} and then', WHOLE, []),
    ("llama3_json", '{"name": "a", "parameters": {}} {"name": "b", "parameters": {}}', WHOLE, []),  # no `;`
    ("llama3_json", '{"name": "a", "parameters": {"n": ', WHOLE, []),
    ("llama3_json", "The answer is {x}.", WHOLE, []),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "b", "arguments": {}}]',
     None, [("get_weather", {"city": "Paris"}), ("b", {})]),
    ("mistral", 'Checking.[TOOL_CALLS]get_weather{"city": "Oslo"}[TOOL_CALLS]b[ARGS]{}', "Checking.",
     [("get_weather", {"city": "Oslo"}), ("b", {})]),
    ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {"city": "Par', WHOLE, []),
    ("mistral", "No tools needed [TOOLS] here.", WHOLE, []),
]


def _expected_content(text, content):
    return text if content is WHOLE else content


def _summary(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES)
def test_parse_finished_text(parser, text, content, calls):
    got_content, got_calls = PARSERS[parser].parse(text)
    assert got_content == _expected_content(text, content)
    assert _summary(got_calls) == calls
    id_form = r"[A-Za-z0-9]{9}" if parser == "mistral" else r"call_[0-9a-f]{24}"
    assert all(re.fullmatch(id_form, c.id) for c in got_calls)
    assert len({c.id for c in got_calls}) == len(got_calls)


def _streamed(parser, deltas):
    """(content, tool_calls deltas, finish_reason, content sent before the last update)."""
    stream, content, calls, reason = ToolStream(PARSERS[parser]), "", [], None
    early = ""
    for i, delta_text in enumerate(deltas):
        last = i == len(deltas) - 1
        delta, reason = stream.step(delta_text, last, "stop" if last else None)
        assert set(delta) <= {"content", "tool_calls"} and delta.get("content", "x") != ""
        content += delta.get("content", "")
        calls += delta.get("tool_calls", [])
        if not last:
            early = content
    return content, calls, reason, early


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES)
def test_streaming_gives_the_finished_answer_whatever_the_chunking(parser, text, content, calls):
    content = _expected_content(text, content)
    splits = [[text[:k], text[k:]] for k in range(1, len(text))] + [list(text), [text]]
    for deltas in splits:
        got, deltas_out, reason, early = _streamed(parser, deltas)
        assert got == (content or "")
        assert [(d["function"]["name"], json.loads(d["function"]["arguments"])) for d in deltas_out] == calls
        assert [d["index"] for d in deltas_out] == list(range(len(calls)))
        assert all(d["type"] == "function" and d["id"] for d in deltas_out)
        assert reason == ("tool_calls" if calls else "stop")
        # what went out before the end is content of the finished answer: no marker leaked
        assert (content or "").startswith(early)


FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool", "[TOOL_CALLS]", "[TOOL", "<|python_tag|>", "<|py",
             '{"name": "f", "arguments": {"a": 1}}', '{"name": "g", "parameters": {}}', ";", " ", "\n", "hi",
             "{", "}", "[", "]", '"', "[ARGS]", "f", '[{"name": "h", "arguments": {"b": [2]}}]',
             '<tool_call>{"name": "k", "arguments": {}}</tool_call>', '[TOOL_CALLS]m{"c": null}']


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_streaming_matches_the_finished_parse_on_random_texts(parser):
    rng, with_calls = random.Random(parser), 0
    for _ in range(2000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 6)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(3, len(text) + 1)))
        content, calls = PARSERS[parser].parse(text)
        got, deltas, _, _ = _streamed(parser, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
        assert got == (content or "")
        assert [(d["function"]["name"], d["function"]["arguments"]) for d in deltas] == \
            [(c.name, c.arguments) for c in calls]
        with_calls += bool(calls)
    assert with_calls > 20  # the texts did hold calls


@pytest.mark.parametrize(("parser", "deltas", "sent"), [
    ("hermes", ["Hi <tool", "_call>", '{"name": "f"'], ["Hi ", "", ""]),
    ("hermes", ["a <tool", "box> b"], ["a ", "<toolbox> b"]),
    ("mistral", ["ok [TOOL", "_CALLS] [", "{"], ["ok ", "", ""]),
    ("llama3_json", ["\n ", " {", '"name"'], ["", "", ""]),
    ("llama3_json", ["\n ", "Hello <|py", "thon"], ["", "\n Hello ", ""]),
])
def test_streaming_holds_back_what_may_begin_a_call(parser, deltas, sent):
    stream = ToolStream(PARSERS[parser])
    assert [stream.step(d, False)[0].get("content", "") for d in deltas] == sent


def test_a_stream_without_a_parser_passes_text_through():
    stream = ToolUse(tools=[WEATHER]).stream()  # tool_choice "none": shown, not parsed
    assert stream.step("<tool_call>", False) == ({"content": "<tool_call>"}, None)
    assert stream.step("", True, "length") == ({}, "length")


def test_message_of_a_finished_choice():
    use = ToolUse([WEATHER], PARSERS["hermes"])
    message, reason = use.message("Looking.\n" + H_CALL, "stop")
    assert reason == "tool_calls" and message["role"] == "assistant" and message["content"] == "Looking.\n"
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}
    assert use.message("Plain answer.", "length") == ({"role": "assistant", "content": "Plain answer."}, "length")
    assert ToolUse().message(H_CALL, "stop") == ({"role": "assistant", "content": H_CALL}, "stop")


def test_special_tokens_are_kept_for_parsers_whose_markers_are_special():
    params = SamplingParams(max_new_tokens=4)
    assert ToolUse([WEATHER], PARSERS["hermes"]).adjust(params).skip_special_tokens is False
    assert ToolUse([WEATHER], PARSERS["mistral"]).adjust(params).skip_special_tokens is False
    assert ToolUse([WEATHER], PARSERS["llama3_json"]).adjust(params).skip_special_tokens is True
    assert ToolUse([WEATHER]).adjust(params) is params


# -- serving options ----------------------------------------------------------------------------

def _config(values, env=None):
    env = env or {}
    return build_config("m", "/artifact", values, env_overrides(env), env_variables(env))


def test_tool_options():
    default = _config({})
    assert (default.enable_auto_tool_choice, default.tool_call_parser) == (False, None)
    on = _config({"option.enable_auto_tool_choice": "true", "option.tool_call_parser": "Hermes"})
    assert (on.enable_auto_tool_choice, on.tool_call_parser, on.unknown_keys) == (True, "hermes", ())
    env = _config({}, {"OPTION_ENABLE_AUTO_TOOL_CHOICE": "true", "OPTION_TOOL_CALL_PARSER": "mistral"})
    assert (env.enable_auto_tool_choice, env.tool_call_parser) == (True, "mistral")


@pytest.mark.parametrize(("values", "env", "expected"), [
    ({"option.tool_call_parser": "qwen"}, {},
     r"option.tool_call_parser: must be one of \['hermes', 'llama3_json', 'mistral'\], got 'qwen'"),
    ({}, {"OPTION_TOOL_CALL_PARSER": "pythonic"}, r"option.tool_call_parser \(environment variable "
                                                  r"OPTION_TOOL_CALL_PARSER\): must be one of \['hermes'"),
    ({"option.enable_auto_tool_choice": "true"}, {},
     r"option.enable_auto_tool_choice: needs option.tool_call_parser, one of \['hermes', 'llama3_json'"),
    ({"option.enable_auto_tool_choice": "yes", "option.tool_call_parser": "hermes"}, {},
     "option.enable_auto_tool_choice: must be true or false"),
])
def test_bad_tool_options_fail_the_load(values, env, expected):
    with pytest.raises(ValueError, match=expected):
        _config(values, env)


# -- request checks -----------------------------------------------------------------------------

HERMES = _config({"option.enable_auto_tool_choice": "true", "option.tool_call_parser": "hermes"})
OFF = _config({"option.tool_call_parser": "hermes"})  # a parser, but auto tool choice not on


@pytest.mark.parametrize(("tools", "choice", "config", "param", "words"), [
    ([WEATHER], None, OFF, "tools", "option.enable_auto_tool_choice=true"),
    ([WEATHER], "auto", None, "tools", "option.tool_call_parser"),
    ([WEATHER], "required", HERMES, "tool_choice", "guided decoding"),
    ([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, HERMES, "tool_choice", "guided decoding"),
    ([WEATHER], "sometimes", HERMES, "tool_choice", "'sometimes'"),
    ([{"type": "retrieval"}], None, HERMES, "tools.0.type", "must be \"function\""),
    ([WEATHER, {"type": "function", "function": {"description": "x"}}], None, HERMES, "tools.1.function.name",
     "required"),
    ([{"type": "function", "function": {"name": "f", "parameters": "none"}}], None, HERMES,
     "tools.0.function.parameters", "JSON Schema"),
])
def test_check_tools_errors(tools, choice, config, param, words):
    with pytest.raises(APIError) as err:
        check_tools(tools, choice, config)
    assert (err.value.status, err.value.param) == (400, param)
    assert words in err.value.message


def test_tool_use_of_a_request():
    assert tool_use([WEATHER], None, HERMES).parser is PARSERS["hermes"]
    assert tool_use([WEATHER], "auto", HERMES).tools == [WEATHER]
    shown = tool_use([WEATHER], "none", OFF)  # shown to the model, not parsed: no option needed
    assert (shown.tools, shown.parser) == ([WEATHER], None)
    assert tool_use(None, None, None) == ToolUse(None, None)
    assert tool_use([], "auto", OFF) == ToolUse(None, None)
    no_parameters = {"type": "function", "function": {"name": "now", "parameters": None}}  # null: as omitted
    assert tool_use([no_parameters], None, HERMES).tools == [no_parameters]


# -- the prompt ---------------------------------------------------------------------------------

TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %} | {% endif %}"
    "{% for m in messages %}"
    "{% if m.tool_calls %}{{ m.role }} calls:{% for c in m.tool_calls %} {{ c.id }} {{ c.function.name }}("
    "{% for k, v in c.function.arguments.items() %}{{ k }}={{ v }};{% endfor %}){% endfor %} | "
    "{% elif m.role == 'tool' %}result {{ m.tool_call_id }}: {{ m.content }} | "
    "{% else %}{{ m.role }}: {{ m.content }} | {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TURNS = [
    {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tool-tokenizer")
    save_tiny_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    return tok


def test_prompt_renders_tools_calls_and_results(tokenizer):
    text = tokenizer.decode(chat_prompt_ids(tokenizer, TURNS, [WEATHER]))
    assert text == ("TOOLS: get_weather | user: Weather in Paris? | assistant calls: call_1 get_weather(city=Paris;) | "
                    "result call_1: 21 C, sunny | assistant:")
    assert "TOOLS" not in tokenizer.decode(chat_prompt_ids(tokenizer, TURNS))


@pytest.mark.parametrize(("arguments", "words"), [('{"city": ', "not valid JSON"), ("[1, 2]", "a JSON object")])
def test_bad_call_arguments_in_messages(tokenizer, arguments, words):
    turns = [TURNS[0], {**TURNS[1], "tool_calls": [CALL, {**CALL, "function": {"name": "f", "arguments": arguments}}]}]
    with pytest.raises(APIError) as err:
        chat_prompt_ids(tokenizer, turns, [WEATHER])
    assert err.value.param == "messages.1.tool_calls.1.function.arguments" and words in err.value.message


def test_a_model_without_a_chat_template_takes_no_tools(tokenizer):
    tokenizer = _without_template(tokenizer)
    with pytest.raises(APIError) as err:
        chat_prompt_ids(tokenizer, TURNS[:1], [WEATHER])
    assert err.value.param == "tools"
    with pytest.raises(APIError) as err:
        chat_prompt_ids(tokenizer, TURNS)
    assert err.value.param == "messages.1.tool_calls"
    plain = [TURNS[0], {"role": "assistant", "content": "Sunny."}, TURNS[2]]
    assert tokenizer.decode(chat_prompt_ids(tokenizer, plain), skip_special_tokens=True) == \
        "user: Weather in Paris?\nassistant: Sunny.\ntool: 21 C, sunny\nassistant:"


def _without_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return tok
