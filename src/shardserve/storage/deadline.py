"""One time budget shared by lock waiting and downloading (option.model_loading_timeout)."""

from __future__ import annotations

import math
import time

from shardserve.storage.exceptions import DownloadTimeout


def parse_seconds(text: str) -> float | None:
    """A time limit as the user wrote it (--timeout, ModelDataDownloadTimeoutInSeconds): a finite
    number of seconds > 0, else None for the caller to refuse naming its own flag or variable."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class Deadline:
    def __init__(self, timeout_s: float | None) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        self.timeout_s = timeout_s
        self._end = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end

    def check(self, doing: str) -> None:
        if self.expired():
            raise self.error(doing)

    def error(self, doing: str) -> DownloadTimeout:
        return DownloadTimeout(
            f"{doing} did not finish within {self.timeout_s:g} s (the limit comes from "
            "option.model_loading_timeout, ModelDataDownloadTimeoutInSeconds or --timeout)"
        )
