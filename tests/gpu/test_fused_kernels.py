"""RMSNorm, rotary and SiLU-mul Triton kernels vs the layers' torch code on random inputs."""

from __future__ import annotations

import pytest
import torch

from helpers.fused_cases import FUSED_CHECKS


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(FUSED_CHECKS))
def test_fused_kernel_matches_layer(name, dtype, tol):
    torch.manual_seed(hash(name) % 1000)
    FUSED_CHECKS[name]("cuda", dtype, tol)
