"""Cold loads in the benchmark: a real checkpoint's files are evicted from the page cache before
each engine loads them, so that no engine's load time profits from another's reads of the same
files (the baseline reads them first). Only this checkpoint's clean pages go, with
posix_fadvise(DONTNEED): no privileges needed, nothing else on the machine is touched."""

from __future__ import annotations

import os
from pathlib import Path


def evict(model_dir: str | Path) -> int:
    """Every file under model_dir out of the page cache; -> how many files."""
    return evict_files([p for p in Path(model_dir).rglob("*") if p.is_file()])


def evict_files(paths: list[Path]) -> int:
    """These files out of the page cache (after a sync: dirty pages stay); -> how many. Where
    the call is not available (not Linux), nothing is evicted."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return len(paths)
