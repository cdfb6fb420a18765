"""Reading the per-file sha256 and size our partition manifest records (`shardserve partition`).

Accepted shapes (a JSON object at the model root named MANIFEST_NAME):
    {"files": {"rank0.safetensors": {"size": 123, "sha256": "<64 hex>"}, ...}}
    {"files": [{"name" | "path" | "file": "rank0.safetensors", "size": 123, "sha256": "..."}]}
A manifest.json of another tool, without such entries, simply yields nothing to check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shardserve.errors import StorageError

MANIFEST_NAME = "manifest.json"
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
        str(name): (int(e["size"]) if isinstance(e.get("size"), int) else None, e["sha256"].lower())
        for name, e in entries
        if name and isinstance(e.get("sha256"), str) and _SHA256.match(e["sha256"])
    }
