"""OpenAI tool calling on /v1/chat/completions, as vLLM's --enable-auto-tool-choice does it.

A model serves tools when its serving.properties set option.enable_auto_tool_choice=true and
option.tool_call_parser (tool_parsers.PARSERS). A request's `tools` go into the chat template;
with tool_choice "auto" (or left out) the output is parsed for calls, with "none" it is not (the
tools are still shown to the model, as in vLLM). "required" and a named function would need
guided decoding: rejected. One ToolUse per request:

    use = tool_use(body.tools, body.tool_choice, model.config)   # the 400s
    prompt = chat_prompt_ids(tokenizer, messages, use.tools)
    params = [use.adjust(p) for p in params]                     # keep the markers in the text
    message, reason = use.message(out.text, reason)              # a finished choice
    stream = use.stream(); delta, reason = stream.step(delta_text, finished, reason)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shardserve.engine.sampling_params import SamplingParams
from shardserve.serving.http_errors import bad_request
from shardserve.serving.tool_parsers import PARSERS, ToolParser

ENABLE_OPTION = "option.enable_auto_tool_choice"
PARSER_OPTION = "option.tool_call_parser"


def check_tools(tools: list | None, tool_choice, config) -> None:
    """400s for what cannot be served: tools on a model that does not parse them (unless
    tool_choice is "none": then nothing is parsed), a tool_choice other than auto or none, a tool
    that is not a function. config: the model's ServingConfig (None: no options set)."""
    if isinstance(tool_choice, dict) or tool_choice == "required":
        raise bad_request("tool_choice: only \"auto\" and \"none\" are supported (\"required\" and a named "
                          "function would need guided decoding)", "tool_choice")
    if tool_choice not in (None, "auto", "none"):
        raise bad_request(f"tool_choice: must be \"auto\" or \"none\", got {tool_choice!r}", "tool_choice")
    if not tools:
        return
    for i, tool in enumerate(tools):
        _check_tool(tool, f"tools.{i}")
    if tool_choice != "none" and not getattr(config, "enable_auto_tool_choice", False):
        raise bad_request(f"tools: this model does not parse tool calls; serve it with {ENABLE_OPTION}=true and "
                          f"{PARSER_OPTION} (one of {sorted(PARSERS)}) in serving.properties, or send "
                          "tool_choice \"none\"", "tools")


def _check_tool(tool, field: str) -> None:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise bad_request(f"{field}.type: must be \"function\"", f"{field}.type")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise bad_request(f"{field}.function.name: required, a non-empty string", f"{field}.function.name")
    if not isinstance(function.get("parameters") or {}, dict):  # null: none, as omitted
        raise bad_request(f"{field}.function.parameters: must be a JSON Schema object",
                          f"{field}.function.parameters")


def tool_use(tools: list | None, tool_choice, config) -> ToolUse:
    """The request's tool calling, after check_tools."""
    check_tools(tools, tool_choice, config)
    parse = bool(tools) and tool_choice != "none"
    return ToolUse(tools or None, PARSERS[config.tool_call_parser] if parse else None)


@dataclass(frozen=True)
class ToolUse:
    tools: list[dict] | None = None  # for the chat template
    parser: ToolParser | None = None  # None: the output is plain content

    def adjust(self, params: SamplingParams) -> SamplingParams:
        """A parser whose marker is a special token needs it in the text (as vLLM's do)."""
        if self.parser is not None and self.parser.needs_special_tokens and params.skip_special_tokens:
            return replace(params, skip_special_tokens=False)
        return params

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """A finished choice's message and finish_reason: "tool_calls" when it made some."""
        if self.parser is None:
            return {"role": "assistant", "content": text}, finish_reason
        content, calls = self.parser.parse(text)
        if not calls:
            return {"role": "assistant", "content": text}, finish_reason
        return ({"role": "assistant", "content": content, "tool_calls": [c.as_dict() for c in calls]},
                "tool_calls")

    def stream(self) -> ToolStream:
        return ToolStream(self.parser)


class ToolStream:
    """One streamed choice: its text deltas -> chat chunk deltas. Plain text goes out as content
    as it comes, but for a suffix that may begin a tool call's marker (held back, as a stop string
    is); once a call begins nothing more is content, and the calls go out, whole, with the last
    update. At the end the whole text is parsed as a finished one is, so a malformed call comes
    out as content and a stream says what the unstreamed answer does."""

    def __init__(self, parser: ToolParser | None):
        self.parser = parser
        self.text = ""
        self.sent = 0  # the characters of text sent as content
        self.in_call = False

    def step(self, delta_text: str, finished: bool, finish_reason: str | None = None) -> tuple[dict, str | None]:
        """The chunk delta for this update ({} when it has nothing to send) and the finish
        reason to report with it ("tool_calls" on the last update of a choice that made some)."""
        if self.parser is None:
            return ({"content": delta_text} if delta_text else {}), finish_reason
        self.text += delta_text
        content = ""
        if not self.in_call:
            start = self.parser.start(self.text)
            self.in_call = start is not None
            end = start if self.in_call else len(self.text) - self.parser.hold(self.text)
            content, self.sent = self.text[self.sent:end], end
        delta: dict = {}
        if finished:
            whole, calls = self.parser.parse(self.text)
            content += (whole or "")[self.sent:]  # what was held back, and a malformed call
            if calls:
                delta["tool_calls"] = [{"index": i, **c.as_dict()} for i, c in enumerate(calls)]
                finish_reason = "tool_calls"
        if content:
            delta = {"content": content, **delta}
        return delta, finish_reason
