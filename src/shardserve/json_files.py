"""Reading the JSON files of a model directory (config.json, generation_config.json, the
pre-sharded manifest): a file that is not a JSON object fails the load, naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from shardserve.errors import ModelLoadError


def read_json_object(path: str | Path) -> dict:
    """The JSON object in `path`; ModelLoadError naming the file if it cannot be read, is not
    JSON, or holds something else."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelLoadError(f"{path}: not a valid JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
