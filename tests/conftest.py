"""Shared fixtures. tests/ is put on sys.path so test modules can `import helpers`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
