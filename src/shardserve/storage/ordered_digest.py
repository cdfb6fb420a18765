"""Hashing a file in offset order while its byte ranges are written in any order.

Whichever thread finishes a range hashes every range now contiguous from the start (read back
from the page cache), so the digest of a big file is ready soon after its last byte lands,
instead of costing a second pass once the download is over.
"""

from __future__ import annotations

import threading
from pathlib import Path

from shardserve.storage.digest import Digester, Expected
from shardserve.storage.exceptions import BadDownload

_READ = 8 << 20


class OrderedDigest:
    def __init__(
        self, path: Path, ranges: list[tuple[int, int]], expected: Expected | None
    ) -> None:
        self.path, self.ranges, self.expected = path, ranges, expected
        self._digester = Digester(expected) if expected else None  # None: size check only
        self._written = [False] * len(ranges)
        self._hashed = 0  # ranges[:_hashed] went through the digester
        self._hashing = False
        self._finished = False
        self._lock = threading.Lock()

    def mark_written(self, index: int) -> None:
        with self._lock:
            self._written[index] = True

    def all_written(self) -> bool:
        with self._lock:
            return all(self._written)

    def advance(self) -> bool:
        """Hash what is contiguous now; True exactly once, for the call that hashed the end."""
        with self._lock:
            if self._hashing:
                return False  # the hashing thread re-checks under the lock and takes our range
            self._hashing = True
        while True:
            with self._lock:
                i = self._hashed
                if i == len(self.ranges) or not self._written[i]:
                    self._hashing = False
                    done = i == len(self.ranges) and not self._finished
                    self._finished |= done
                    return done
            if self._digester is not None:
                feed_file(self.path, *self.ranges[i], self._digester)
            with self._lock:
                self._hashed += 1

    def value(self) -> str | None:
        return self._digester.value() if self._digester else None


def feed_file(path: Path, start: int, end: int, digester: Digester) -> None:
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while start < end:
            data = f.read(min(_READ, end - start))
            if not data:
                raise BadDownload(f"{path} is shorter than expected (ends at byte {start})")
            digester.update(data)
            start += len(data)
