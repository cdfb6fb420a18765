"""Typed reads of serving.properties' raw string values (serving/properties.py builds the
ServingConfig with it): each bad value is a ValueError naming its key, and the environment
variable that set it when one did (the file may not even mention the key)."""

from __future__ import annotations

from collections.abc import Mapping

from shardserve.config import parse_tp_degree


class PropertyReader:
    """Typed access to the raw string values; remembers which keys were read."""

    def __init__(self, values: Mapping[str, str], env_names: Mapping[str, str] | None = None):
        self.values = dict(values)
        self._env_names = dict(env_names or {})
        self.seen: set[str] = set()  # the keys asked for, known or not

    def invalid(self, key: str, problem: str) -> ValueError:
        """The error for a bad value: the key, and the variable when the environment set it (the
        file may not even mention the key)."""
        where = f" (environment variable {self._env_names[key]})" if key in self._env_names else ""
        return ValueError(f"{key}{where}: {problem}")

    def text(self, key: str) -> str | None:
        self.seen.add(key)
        value = self.values.get(key)
        return value.strip() if value is not None and value.strip() else None

    def choice(self, key: str, allowed: set[str], default):
        value = self.text(key)
        if value is None:
            return default
        if value.lower() not in allowed:
            raise self.invalid(key, f"must be one of {sorted(allowed)}, got {value!r}")
        return value.lower()

    def integer(self, key: str, default, minimum: int):
        return self._parsed(key, default, int, lambda n: n >= minimum, f"an integer >= {minimum}")

    def number(self, key: str, default, minimum: float):
        return self._parsed(key, default, float, lambda x: minimum <= x < float("inf"), f"a number >= {minimum:g}")

    def _parsed(self, key: str, default, convert, valid, expected: str):
        value = self.text(key)
        if value is None:
            return default
        try:
            result = convert(value)
        except ValueError:
            result = None
        if result is None or not valid(result):  # NaN fails every comparison, so it lands here too
            raise self.invalid(key, f"must be {expected}, got {value!r}")
        return result

    def seconds(self, key: str, default: float) -> float:
        value = self.number(key, default, minimum=0.0)
        if value <= 0:
            raise self.invalid(key, f"must be a number of seconds > 0, got {self.values[key]!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.text(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise self.invalid(key, f"must be true or false, got {value!r}")
        return value.lower() == "true"

    def tp_degree(self, key: str) -> int:
        value = self.text(key)
        if value is None:
            return 1
        try:
            return parse_tp_degree(value)
        except ValueError as e:
            raise self.invalid(key, str(e)) from None
