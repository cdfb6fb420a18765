"""Append-only record of finished byte ranges, so a killed download resumes where it stopped.

A line is written only after its bytes are in the file, so a line never claims more than was
written. Lines carry the object's ETag: ranges of an object that changed since are ignored.
The checksum pass reads every byte back, so a resumed file is verified like a fresh one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

Range = tuple[str, str, int, int]  # key, etag, start, end (exclusive)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def load(self) -> set[Range]:
        if not self.path.exists():
            return set()
        done: set[Range] = set()
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                key, etag, start, end = json.loads(line)
                done.add((str(key), str(etag), int(start), int(end)))
            except (ValueError, TypeError):
                continue  # a line cut short by a kill
        return done

    def record(self, entry: Range) -> None:
        line = (json.dumps(list(entry)) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, line)  # one small O_APPEND write: never interleaved

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
