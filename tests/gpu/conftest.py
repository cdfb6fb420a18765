"""GPU tests: run on the device machine (`python3 -m pytest tests/gpu`); never collected by the
default CPU run (pyproject's testpaths), and skipped where no CUDA GPU is visible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shardserve.kernels import tuned_gemm

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


@pytest.fixture
def fresh_tuning(monkeypatch):
    """Tuning on, with an empty cache (restored afterwards)."""
    monkeypatch.setattr(tuned_gemm, "TUNE", True)
    monkeypatch.setattr(tuned_gemm, "_TUNED", {})
    return tuned_gemm._TUNED


@pytest.fixture
def timed(monkeypatch) -> dict:
    """Every candidate's time (us) of the tunings that run during the test."""
    times_seen, real_tune = {}, tuned_gemm._tune

    def tune(*args):
        cfg, times = real_tune(*args)
        times_seen.update(times)
        return cfg, times

    monkeypatch.setattr(tuned_gemm, "_tune", tune)
    return times_seen
