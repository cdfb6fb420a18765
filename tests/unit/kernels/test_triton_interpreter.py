"""The Triton attention kernels on the CPU through Triton's interpreter.

Runs where TRITON_INTERPRET=1 is set before the test starts, as tests/conftest.py does on a
machine without a GPU (CI included: the test install pins triton); the GPU tests in tests/gpu run
the same cases compiled.
"""

from __future__ import annotations

import pytest
import torch

from helpers.attention_cases import KERNEL_CASES, check_decode_padding_rows, check_triton_case
from helpers.fused_cases import FUSED_CHECKS
from helpers.markers import needs_interpreter

pytest.importorskip("triton")
pytestmark = needs_interpreter


@pytest.mark.parametrize("name,kwargs", KERNEL_CASES, ids=[c[0] for c in KERNEL_CASES])
def test_kernels_match_reference_in_interpreter(name, kwargs):
    # float16 math in the interpreter is numpy's; the products stay in half precision as on GPUs.
    check_triton_case(kwargs, "cpu", torch.float16, tol=5e-3)


def test_decode_split_counts_agree():
    kwargs = dict(cached=[300, 31], q_lens=[1, 1], num_heads=4, num_kv_heads=2)
    for splits in (1, 2, 16):
        check_triton_case(kwargs, "cpu", torch.float16, tol=5e-3, num_splits=splits)


@pytest.mark.parametrize("name", sorted(FUSED_CHECKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_kernels_match_layers_in_interpreter(name, dtype):
    FUSED_CHECKS[name]("cpu", dtype, tol=1e-6 if dtype == torch.float32 else 2e-3)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_padding_rows_in_interpreter(num_splits):
    check_decode_padding_rows("cpu", torch.float16, num_splits)
