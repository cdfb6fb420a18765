"""GPU tests: run on the device machine (`python3 -m pytest tests/gpu`); never collected by the
default CPU run (pyproject's testpaths), and skipped where no CUDA GPU is visible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    # The hook sees every collected test, not only this folder's: mark only ours.
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if HERE not in Path(item.path).parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if not torch.cuda.is_available():
            item.add_marker(skip)
