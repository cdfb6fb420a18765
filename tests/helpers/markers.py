"""Markers shared by the unit tests."""

import os

import pytest

# Triton kernels run on the CPU only in Triton's interpreter (tests/conftest.py turns it on when
# no GPU is visible); elsewhere these tests belong to tests/gpu.
needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="set TRITON_INTERPRET=1 to run Triton on the CPU"
)
