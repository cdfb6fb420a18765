"""DJLServing-style artifacts for the tests: serving.properties (+ model.py) in a directory."""

from __future__ import annotations

import shutil
from pathlib import Path

HANDLER_SOURCE = Path(__file__).parent / "handlers" / "djl_model.py"


def write_artifact(path: Path, properties: dict[str, object], handler: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={value}" for key, value in properties.items()]
    (path / "serving.properties").write_text("# written by the tests\n" + "\n".join(lines) + "\n")
    if handler:
        shutil.copy(HANDLER_SOURCE, path / "model.py")
    return path
