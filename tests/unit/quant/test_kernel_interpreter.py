"""The 8-bit matmul kernel on the CPU through Triton's interpreter (tests/gpu runs it compiled).

Runs only where triton is installed and TRITON_INTERPRET=1 is set before the test starts; CI
machines have no triton and skip it. float16 only: the interpreter has no bfloat16 arithmetic.
"""

from __future__ import annotations

import pytest
import torch

from helpers.markers import needs_interpreter
from helpers.quant_cases import CONFIGS, SMALL_SHAPES, check_kernel

pytest.importorskip("triton")
pytestmark = needs_interpreter


@pytest.mark.parametrize("qdtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
def test_kernel_matches_reference_in_interpreter(shape, qdtype):
    for config in [None, *CONFIGS]:
        check_kernel(*shape, qdtype, torch.float16, "cpu", config=config, tol=1.5e-3)


@pytest.mark.parametrize("qdtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
def test_kernel_without_bias_on_strided_rows(qdtype):
    check_kernel(5, 96, 200, qdtype, torch.float16, "cpu", tol=1.5e-3, bias=False, strided=True)
