"""Download progress: a tqdm bar (bytes/s) on a terminal, and one summary log line at the end."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("shardserve.storage")


class Progress:
    def __init__(self, label: str, total: int, already: int, enabled: bool) -> None:
        self.label = label
        self.fetched = 0  # bytes transferred by this run (resumed bytes excluded)
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._bar = None  # None: disabled (no bar, no summary line)
        if enabled:
            from tqdm import tqdm

            # disable=None: only on a terminal, so server logs do not fill with \r redraws.
            self._bar = tqdm(
                total=total,
                initial=already,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label[-40:],
                disable=None,
                mininterval=0.5,
                smoothing=0.1,
            )

    def add(self, n: int) -> None:
        with self._lock:
            self.fetched += n
            if self._bar is not None:
                self._bar.update(n)

    def close(self, ok: bool) -> None:
        if self._bar is not None:
            self._bar.close()
        if ok and self._bar is not None:
            seconds = max(time.monotonic() - self._start, 1e-9)
            logger.info(
                "downloaded %s: %.3f GB in %.2f s (%.3f GB/s)",
                self.label,
                self.fetched / 1e9,
                seconds,
                self.fetched / 1e9 / seconds,
            )
