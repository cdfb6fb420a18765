"""Tool calls in a model's text, one parser per output format (vLLM's --tool-call-parser names).

Each parser finds where a tool call begins in the text (`start`) and reads the calls from there
to the end (`_calls`): text before the first call is content; text between or after calls is
dropped, as in vLLM. Anything malformed after a marker leaves the whole text as content: a parser
never raises on model output. Streaming (tool_calls.ToolStream) lets plain text out as it comes
but for a suffix that may begin a call (`hold`), stops at a call's beginning (`start`), and parses
the whole text at the end (`parse`), as a finished output.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass

_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI's API carries it

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def openai_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def mistral_call_id() -> str:
    """Mistral's chat templates reject a later turn whose tool call ids are not 9 alphanumerics."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


class ToolParser:
    name = ""
    marker = ""  # the text that opens a tool call
    # The marker is a special token that skip_special_tokens=True would drop from the text.
    needs_special_tokens = True
    new_id = staticmethod(openai_call_id)

    def start(self, text: str) -> int | None:
        """Where a tool call begins in `text`, or None while none has."""
        i = text.find(self.marker)
        return i if i >= 0 else None

    def hold(self, text: str) -> int:
        """How many characters at the end of `text` (no call begun) may be a call's beginning."""
        return partial_marker(text, self.marker)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """A finished output -> (content, calls); (text, []) when it holds no well-formed call."""
        i = self.start(text)
        if i is None:
            return text, []
        try:
            calls = self._calls(text[i:])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            calls = []  # malformed: no call
        if not calls:
            return text, []
        return text[:i] or None, calls

    def _calls(self, body: str) -> list[ToolCall]:
        raise NotImplementedError

    def _call(self, obj, args_key: str = "arguments") -> ToolCall:
        """{"name": str, args_key: object} -> a ToolCall; TypeError when it is not that shape."""
        name = obj.get("name") if isinstance(obj, dict) else None
        # A function without parameters may omit them.
        args = obj.get(args_key, {}) if name else None
        if not isinstance(name, str) or not name or not isinstance(args, dict):
            raise TypeError(f"not a tool call: {obj!r}")
        return ToolCall(self.new_id(), name, json.dumps(args, ensure_ascii=False))


def partial_marker(text: str, marker: str) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class HermesParser(ToolParser):
    """Qwen2.5, Hermes 2/3: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, once
    or more. The last may lack its closing tag (the output was cut, or a stop string took it)."""

    name, marker = "hermes", "<tool_call>"
    _blocks = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)

    def _calls(self, body: str) -> list[ToolCall]:
        return [self._call(json.loads(closed or open_)) for closed, open_ in self._blocks.findall(body)]


class Llama3JsonParser(ToolParser):
    """Llama 3.1 / 3.2: the whole output is `{"name": ..., "parameters": {...}}` (or "arguments"),
    several separated by `;`, optionally after `<|python_tag|>`. An output that begins with `{`
    is read as calls; JSON that is not calls stays content."""

    name, marker = "llama3_json", "<|python_tag|>"
    # The JSON form needs no marker, so the calls are found whether or not the tag is decoded:
    # no need to turn skip_special_tokens off (it would let other special tokens into content).
    needs_special_tokens = False
    _json_first = re.compile(r"\s*\{")  # not text.lstrip(): no copy of a long text every step

    def start(self, text: str) -> int | None:
        i = text.find(self.marker)
        if i >= 0:
            return i
        return 0 if self._json_first.match(text) else None

    def hold(self, text: str) -> int:
        if not text or text.isspace():  # leading whitespace: a `{` may follow
            return len(text)
        return super().hold(text)

    def _calls(self, body: str) -> list[ToolCall]:
        body = body.removeprefix(self.marker)
        decoder, pos, calls = json.JSONDecoder(), 0, []
        while True:
            pos = _skip_space(body, pos)
            obj, pos = decoder.raw_decode(body, pos)
            calls.append(self._call(obj, "arguments" if "arguments" in obj else "parameters"))
            pos = _skip_space(body, pos)
            if pos == len(body):
                return calls
            if body[pos] != ";":
                raise ValueError(f"text after a tool call: {body[pos:]!r}")
            pos += 1


class MistralParser(ToolParser):
    """Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`; newer tokenizers (v11+)
    write `[TOOL_CALLS]name{...}` (v13: `name[ARGS]{...}`) once per call."""

    name, marker = "mistral", "[TOOL_CALLS]"
    new_id = staticmethod(mistral_call_id)
    _named = re.compile(r"([A-Za-z0-9_.-]+)(?:\[ARGS\])?(\{.*\})", re.DOTALL)

    def _calls(self, body: str) -> list[ToolCall]:
        calls = []
        for part in body.split(self.marker)[1:]:
            part = part.strip()
            if part.startswith("["):
                calls += [self._call(obj) for obj in json.loads(part)]
            elif match := self._named.fullmatch(part):
                calls.append(self._call({"name": match[1], "arguments": json.loads(match[2])}))
            else:
                raise ValueError(f"not a tool call: {part!r}")
        return calls


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


PARSERS: dict[str, ToolParser] = {p.name: p for p in (HermesParser(), Llama3JsonParser(), MistralParser())}
