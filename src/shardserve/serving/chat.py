"""Chat messages -> prompt token ids, with the model's own chat template when it has one.

Messages are OpenAI's, as dicts: `content` a string, a list of text parts or null; an assistant's
`tool_calls` ([{id, type, function: {name, arguments: JSON text}}]) and a tool's `tool_call_id`.
Chat templates (Llama 3.1's, Qwen2.5's, Hermes') read a call's arguments as a dict, so the JSON
text is decoded before rendering, as vLLM does.
"""

from __future__ import annotations

import json

from shardserve.serving.http_errors import bad_request


def chat_prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Render with tokenizer_config.json's chat_template (it adds its own special tokens, so
    none are added again), the tools given to it; models without one get a plain `role: content`
    transcript, which has no place for tools or tool calls."""
    messages = [_template_message(m, f"messages.{i}") for i, m in enumerate(messages)]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:  # jinja2 errors: templates often raise on unsupported role orders
            raise bad_request(f"messages: the model's chat template rejected them: {e}", "messages") from None
        return tokenizer.encode(text, add_special_tokens=False)
    if tools:
        raise bad_request("tools: the model has no chat template, so it cannot be shown tools", "tools")
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            raise bad_request(f"messages.{i}.tool_calls: the model has no chat template to render tool calls",
                              f"messages.{i}.tool_calls")
    transcript = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return tokenizer.encode(transcript + "assistant:")


def _template_message(message: dict, field: str) -> dict:
    """The message as chat templates read it: content as text, tool call arguments as dicts."""
    out = {"role": message["role"], "content": _text(message.get("content"))}
    if message.get("tool_call_id") is not None:
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("tool_calls"):
        out["tool_calls"] = [_template_call(call, f"{field}.tool_calls.{k}")
                             for k, call in enumerate(message["tool_calls"])]
    return out


def _text(content) -> str:
    if isinstance(content, list):  # text parts (the route passes them as dicts)
        return "".join(part["text"] for part in content)
    return content or ""


def _template_call(call: dict, field: str) -> dict:
    function = call.get("function") or {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as e:
            raise bad_request(f"{field}.function.arguments: not valid JSON ({e})",
                              f"{field}.function.arguments") from None
        except RecursionError:  # JSON nested deeper than the parser goes
            raise bad_request(f"{field}.function.arguments: its JSON nests arrays and objects too deeply",
                              f"{field}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise bad_request(f"{field}.function.arguments: must be a JSON object, got {arguments!r}",
                          f"{field}.function.arguments")
    return {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}
