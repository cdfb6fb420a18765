"""kernels/pdl.py's launch arguments: programmatic dependent launch only for CUDA tensors on
Hopper or later (tests/gpu/test_engine_parity.py runs it), never for Triton's interpreter; and
the decode GEMMs' weight prefetch budget (tests/gpu/test_quant_kernels.py runs the prefetch)."""

from __future__ import annotations

import pytest
import torch

from shardserve.kernels import gemm_kernels, pdl


def test_cpu_tensors_launch_the_ordinary_way_even_when_on():
    try:
        pdl.set_pdl(True)
        assert pdl.pdl_args(torch.ones(2)) == {"PDL": False}
    finally:
        pdl.set_pdl(False)


def test_cpu_tensors_prefetch_nothing_even_when_on():
    try:
        pdl.set_pdl(True, weight_prefetch_bytes=1 << 20)
        assert pdl.weight_prefetch_bytes(torch.ones(2)) == 0
    finally:
        pdl.set_pdl(False)


def test_a_negative_prefetch_budget_is_refused():
    with pytest.raises(ValueError, match="weight_prefetch_bytes must be >= 0"):
        pdl.set_pdl(True, weight_prefetch_bytes=-1)


def test_the_prefetch_budget_is_spread_over_rows_and_splits_in_16_byte_units(monkeypatch):
    monkeypatch.setattr(gemm_kernels, "weight_prefetch_bytes", lambda x: 1 << 20)
    x = torch.ones(4, 4096, dtype=torch.bfloat16)
    weight = torch.ones(1000, 4096, dtype=torch.bfloat16)
    assert gemm_kernels.prefetch_row_bytes(x, weight, split_k=1) == 1040  # 1 MiB / 1000 rows = 1048.6
    assert gemm_kernels.prefetch_row_bytes(x, weight, split_k=3) == 336  # / 3 splits = 349.5
    # The bulk prefetch needs 16-byte-aligned rows: a row of 4100 bytes (int8) gets none.
    assert gemm_kernels.prefetch_row_bytes(x, torch.ones(1000, 4100, dtype=torch.int8), split_k=1) == 0
    # So does a weight that starts off a 16-byte boundary.
    assert gemm_kernels.prefetch_row_bytes(x, weight.view(-1)[1 : 1 + 999 * 4096].view(999, 4096), 1) == 0
    monkeypatch.setattr(gemm_kernels, "weight_prefetch_bytes", lambda x: 0)
    assert gemm_kernels.prefetch_row_bytes(x, weight, split_k=1) == 0
