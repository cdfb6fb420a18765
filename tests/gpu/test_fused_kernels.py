"""RMSNorm, LayerNorm, rotary and SiLU-mul Triton kernels, and the fused residual add + norm
kernels, vs the layers' torch code on random inputs."""

from __future__ import annotations

import pytest
import torch

from helpers.fused_cases import FUSED_CHECKS
from helpers.fused_norm_cases import FUSED_ADD_NORM_CHECKS

DTYPES = pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)], ids=["fp32", "fp16", "bf16"]
)


@DTYPES
@pytest.mark.parametrize("name", sorted(FUSED_CHECKS))
def test_fused_kernel_matches_layer(name, dtype, tol):
    torch.manual_seed(hash(name) % 1000)
    FUSED_CHECKS[name]("cuda", dtype, tol)


# Odd sizes for the masked tail, and the hidden sizes of Llama-3-8B (4096), OPT-30B (7168) and
# Llama-70B (8192) at decode (1 row) and prefill (300 rows) batch sizes.
@DTYPES
@pytest.mark.parametrize("rows,dim", [(7, 1000), (3, 33), (1, 4096), (300, 4096), (4, 7168), (2, 8192)])
@pytest.mark.parametrize("name", sorted(FUSED_ADD_NORM_CHECKS))
def test_fused_add_norm_matches_layer(name, rows, dim, dtype, tol):
    # Also checks: new residual == x + residual and output == the unfused kernel's, bit for bit.
    torch.manual_seed(rows * dim)
    FUSED_ADD_NORM_CHECKS[name]("cuda", dtype, tol, rows=rows, dim=dim)
