"""The per-file sha256 and size of our partition manifest (`shardserve partition`,
weights/manifest.py), so a download is checked against the digests written at partitioning.

Shape read: {"files": [{"name": "rank-00000-of-00002.safetensors", "bytes": 123, "sha256": "<hex>"}]}
Entries without a valid sha256 are simply not checked this way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shardserve.errors import StorageError
from shardserve.weights.manifest import MANIFEST

__all__ = ["MANIFEST", "file_digests"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def file_digests(path: Path) -> dict[str, tuple[int | None, str]]:
    """{relpath: (size or None, sha256 hex)} for every entry that carries a sha256."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StorageError(f"partition manifest {path} cannot be read: {e}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return {}
    return {
        e["name"]: (e.get("bytes") if isinstance(e.get("bytes"), int) else None, e["sha256"].lower())
        for e in files
        if isinstance(e, dict) and isinstance(e.get("name"), str)
        and isinstance(e.get("sha256"), str) and _SHA256.match(e["sha256"])
    }
