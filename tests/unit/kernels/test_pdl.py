"""kernels/pdl.py's launch arguments: programmatic dependent launch only for CUDA tensors on
Hopper or later (tests/gpu/test_engine_parity.py runs it), never for Triton's interpreter."""

from __future__ import annotations

import torch

from shardserve.kernels import pdl


def test_cpu_tensors_launch_the_ordinary_way_even_when_on():
    try:
        pdl.set_pdl(True)
        assert pdl.pdl_args(torch.ones(2)) == {"PDL": False}
    finally:
        pdl.set_pdl(False)
