"""The pre-sharded checkpoint's manifest (see weights/presharded.py): its name, format and
digests. Free of torch, so storage can verify a download against it cheaply.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from shardserve.errors import ModelLoadError
from shardserve.json_files import read_json_object

MANIFEST = "shardserve-manifest.json"
FORMAT = "shardserve-presharded"
# Rank files hold the parameters as the model keeps them in memory, so any change to how a layer
# stores its slice bumps the version. 2: BLOOM's query_key_value rows as [3, heads, head_dim].
FORMAT_VERSION = 2
BLOCK_BYTES = 16 << 20  # hash granularity: blocks are verified in parallel as they are read


def rank_file_name(rank: int, tp_size: int) -> str:
    return f"rank-{rank:05d}-of-{tp_size:05d}.safetensors"


def is_rank_file_name(name: str) -> bool:
    """Whether `name` has rank_file_name's form."""
    return re.fullmatch(r"rank-\d{5}-of-\d{5}\.safetensors", name) is not None


def is_presharded(model_dir: str | Path) -> bool:
    return (Path(model_dir) / MANIFEST).is_file()


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    manifest = read_json_object(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} "
            f"is not {FORMAT!r} version {FORMAT_VERSION}: write it again with `shardserve partition`"
        )
    _check_entries(manifest, path)
    return manifest


def _check_entries(manifest: dict, path: Path) -> None:
    """What the loaders read without asking: the degree and a complete entry per rank file."""
    tp_size, files = manifest.get("tp_size"), manifest.get("files")
    if not (isinstance(tp_size, int) and tp_size >= 1):
        raise ModelLoadError(f"{path}: tp_size must be an integer >= 1, got {tp_size!r}")
    if not (isinstance(files, list) and len(files) == tp_size):
        count = len(files) if isinstance(files, list) else files
        raise ModelLoadError(f"{path}: files must list {tp_size} rank files (tp_size), got {count!r}")
    for rank, entry in enumerate(files):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):
            raise ModelLoadError(f"{path}: files[{rank}] must have a name, bytes and sha256, got {entry!r}"[:300])
        if entry["name"] != Path(entry["name"]).name or entry["name"] in ("", ".", ".."):
            # partition writes plain names: a path would read a rank file from elsewhere
            raise ModelLoadError(
                f"{path}: files[{rank}] name {entry['name']!r} is not a file of this directory")


def sha256_of(path: Path, chunk: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_digests(path: Path, block_bytes: int = BLOCK_BYTES) -> tuple[str, list[str]]:
    """(sha256 of the file, sha256 of each consecutive block_bytes block) in one pass."""
    digest, blocks = hashlib.sha256(), []
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
            blocks.append(hashlib.sha256(block).hexdigest())
    return digest.hexdigest(), blocks
