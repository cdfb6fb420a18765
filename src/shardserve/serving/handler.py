"""DJLServing's handler contract: `handle(inputs: Input) -> Output | None`.

The same method names and behaviour as `djl_python.inputs.Input` / `djl_python.outputs.Output`,
so handler modules written for DJLServing run unchanged (djl_compat offers these classes under
the `djl_python` import name). Content is an ordered list of (key, bytes) pairs; properties are
strings (HTTP headers on requests, serving options on the initialisation call).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


class PairList:
    """Ordered (key, value) pairs; keys may repeat (DJL's PairList)."""

    def __init__(self, pairs: Iterable[tuple[str | None, Any]] = ()):
        self.keys: list[str | None] = []
        self.values: list[Any] = []
        for key, value in pairs:
            self.add(key, value)

    def add(self, key: str | None = None, value: Any = None) -> None:
        self.keys.append(key)
        self.values.append(value)

    def size(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return not self.keys

    def key_at(self, index: int):
        return self.keys[index]

    def value_at(self, index: int):
        return self.values[index]

    def get(self, key) -> Any:
        if isinstance(key, int):
            return self.values[key]
        for k, v in zip(self.keys, self.values, strict=True):
            if k == key:
                return v
        return None

    def get_keys(self) -> list:
        return list(self.keys)

    def get_values(self) -> list:
        return list(self.values)


class Input:
    def __init__(self, properties: dict[str, str] | None = None, content: PairList | None = None):
        self.function_name: str | None = None
        self.properties: dict[str, str] = dict(properties or {})
        self.content = content if content is not None else PairList()

    @classmethod
    def from_request(cls, body: bytes, headers: dict[str, str]) -> Input:
        inputs = cls(properties=headers)
        if body:
            inputs.content.add("data", body)
        return inputs

    def get_properties(self) -> dict[str, str]:
        return self.properties

    def get_property(self, key: str) -> str | None:
        return next((v for k, v in self.properties.items() if k.lower() == key.lower()), None)

    def get_content(self) -> PairList:
        return self.content

    def get_function_name(self) -> str | None:
        return self.function_name

    def is_empty(self) -> bool:
        return self.content.is_empty()

    def contains_key(self, key: str) -> bool:
        return self.content.get(key) is not None

    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_batches(self) -> list[Input]:
        return [self]  # the server hands handlers one request at a time

    def get_as_bytes(self, key: str | None = None) -> bytes | None:
        if self.content.is_empty():
            return None
        if key:
            value = self.content.get(key)
            if value is None:
                raise KeyError(f"requested data for key:{key} is not found!")
            return value
        value = self.content.get("data")
        return value if value is not None else self.content.value_at(0)

    def get_as_string(self, key: str | None = None) -> str:
        return bytes(self.get_as_bytes(key) or b"").decode("utf-8")

    def get_as_json(self, key: str | None = None):
        return json.loads(self.get_as_string(key))

    def get_data(self, key: str | None = None):
        content_type = (self.get_property("content-type") or "").lower()
        if content_type.startswith("application/json"):
            return self.get_as_json(key)
        if content_type.startswith("text/"):
            return self.get_as_string(key)
        return None if self.content.is_empty() else self.get_as_bytes(key)


class Output:
    def __init__(self, code: int = 200, message: str = "OK"):
        self.code = code
        self.message = message
        self.properties: dict[str, str] = {}
        self.content = PairList()
        self.stream_content: Iterable | None = None
        self.output_formatter = None

    def set_code(self, code: int) -> Output:
        self.code = code
        return self

    def set_message(self, message: str) -> Output:
        self.message = message
        return self

    def add_property(self, key: str, val: str) -> Output:
        self.properties[key] = val
        return self

    def error(self, error: str, code: int = 424, message: str = "prediction failure") -> Output:
        """DJLServing answers a handler-reported failure with 424 and this JSON body."""
        self.code, self.message = code, message
        self.add_property("content-type", "application/json")
        return self.add_as_json({"code": code, "message": message, "error": error})

    def add(self, value: Any, key: str | None = None, batch_index: int | None = None) -> Output:
        if isinstance(value, str):
            self.content.add(key, value.encode("utf-8"))
        elif isinstance(value, (bytes, bytearray)):
            self.content.add(key, bytes(value))
        else:
            self.add_as_json(value, key)
        return self

    def add_as_json(self, val: Any, key: str | None = None, batch_index: int | None = None) -> Output:
        self.content.add(key, json.dumps(val, ensure_ascii=False, default=_jsonable).encode("utf-8"))
        return self

    def add_as_string(self, val: str, key: str | None = None, batch_index: int | None = None) -> Output:
        return self.add(str(val), key)

    def add_stream_content(self, stream: Iterable, output_formatter=None) -> Output:
        """A (sync) iterable whose items the server sends as they come."""
        self.stream_content = stream
        self.output_formatter = output_formatter
        return self

    def body(self) -> bytes:
        """The response body: the content values in order (handlers almost always add one)."""
        return b"".join(bytes(v) for v in self.content.get_values())

    def content_type(self) -> str | None:
        return next((v for k, v in self.properties.items() if k.lower() == "content-type"), None)


def format_stream_item(item: Any, formatter=None) -> bytes:
    """One streamed item as bytes: the handler's formatter if any, else text as-is and anything
    else as a JSON line."""
    if formatter is not None:
        item = formatter(item)
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    return (json.dumps(item, ensure_ascii=False, default=_jsonable) + "\n").encode("utf-8")


def _jsonable(obj: Any):
    """numpy scalars/arrays and tensors, which handlers often return."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
