"""Offline lookup of a model already in the Hugging Face hub cache (never downloads).

Cache layout (huggingface_hub): <hub>/models--<org>--<name>/{refs/main, snapshots/<commit>/...}.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shardserve.errors import StorageError

_MODEL_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


def hub_dir() -> Path:
    """The hub cache the `huggingface_hub` library would use, from the same env variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def find_snapshot(model_id: str) -> Path | None:
    """`org/name` -> its cached snapshot dir, or None when it is not a cached model id."""
    if not _MODEL_ID.match(model_id):
        return None
    repo_dir = hub_dir() / ("models--" + model_id.replace("/", "--"))
    return snapshot_of_repo_dir(repo_dir) if repo_dir.is_dir() else None


def snapshot_of_repo_dir(repo_dir: Path) -> Path | None:
    """The snapshot `refs/main` points at (or the only one); None if repo_dir is no cache repo."""
    snapshots = repo_dir / "snapshots"
    if not repo_dir.name.startswith("models--") or not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text().strip()
        if chosen.is_dir():
            return chosen
    candidates = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(candidates) == 1:
        return candidates[0]
    raise StorageError(
        f"Hugging Face cache repo {repo_dir} has {len(candidates)} snapshots and no usable "
        "refs/main: pass the snapshot directory itself"
    )
