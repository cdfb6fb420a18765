"""GPU tests: run on the device machine (`python3 -m pytest tests/gpu`); never collected by the
default CPU run (pyproject's testpaths), and skipped where no CUDA GPU is visible."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        item.add_marker(pytest.mark.gpu)
        if not torch.cuda.is_available():
            item.add_marker(skip)
