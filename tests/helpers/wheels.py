"""A minimal pure-Python wheel, so requirements.txt installs need no index (CI has no network)."""

from __future__ import annotations

import zipfile
from pathlib import Path


def tiny_wheel(directory: Path, name: str = "tinydep", version: str = "0.1", value: int = 42) -> str:
    """Writes `<name>-<version>-py3-none-any.whl` (module `name` with VALUE) and returns its file name."""
    path = Path(directory) / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.py", f"VALUE = {value}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{name}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path.name
