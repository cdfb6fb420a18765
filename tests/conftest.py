"""Shared fixtures. tests/ is put on sys.path so test modules can `import helpers`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU, Triton kernels run in Triton's interpreter, so CPU CI checks them against their
# torch references too. Must be set before anything imports triton.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers.checkpoints import make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint("llama", sharded=True, vocab_size=515) -> Path.

    Built once per test session per distinct arguments; treat the directory as read-only (copy
    it with helpers.checkpoints.copy_checkpoint before corrupting it).
    """
    cache: dict[tuple, Path] = {}

    def build(arch: str, **kwargs) -> Path:
        key = (arch, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = make_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"ckpt-{arch}"), **kwargs)
        return cache[key]

    return build
