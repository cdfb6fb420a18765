"""Reading the per-file sha256 and size our partition manifest records (`shardserve partition`,
weights/manifest.py), so a download is checked against the digests written at partitioning.

The manifest is MANIFEST_NAME at the model root; the shapes read:
    {"files": [{"name": "rank-00000-of-00002.safetensors", "bytes": 123, "sha256": "<hex>"}]}
    {"files": {"rank-00000-of-00002.safetensors": {"size": 123, "sha256": "<hex>"}}}
Entries without a sha256 are simply not checked this way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shardserve.errors import StorageError

# Same name as weights.manifest.MANIFEST, not imported from there: the `shardserve.weights`
# package's __init__ imports torch, which `shardserve download` must not load.
MANIFEST_NAME = "shardserve-manifest.json"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def file_digests(path: Path) -> dict[str, tuple[int | None, str]]:
    """{relpath: (size or None, sha256 hex)} for every entry that carries a sha256."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StorageError(f"partition manifest {path} cannot be read: {e}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, dict):
        entries = [(name, entry) for name, entry in files.items() if isinstance(entry, dict)]
    elif isinstance(files, list):
        entries = [
            (e.get("name") or e.get("path") or e.get("file"), e)
            for e in files
            if isinstance(e, dict)
        ]
    else:
        return {}
    return {
        str(name): (_size(e), e["sha256"].lower())
        for name, e in entries
        if name and isinstance(e.get("sha256"), str) and _SHA256.match(e["sha256"])
    }


def _size(entry: dict) -> int | None:
    size = entry.get("bytes", entry.get("size"))
    return size if isinstance(size, int) else None
