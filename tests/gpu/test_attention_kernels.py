"""Triton paged attention (decode, prefill, cache write) vs the torch reference on random inputs."""

from __future__ import annotations

import pytest
import torch

from helpers.attention_cases import (
    KERNEL_CASES,
    check_decode_padding_rows,
    check_triton_case,
    make_case,
)

# bf16 products/softmax weights round at ~4e-3; fp16 at ~5e-4.
TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name,kwargs", KERNEL_CASES, ids=[c[0] for c in KERNEL_CASES])
def test_kernels_match_reference(name, kwargs, dtype):
    check_triton_case(kwargs, "cuda", dtype, TOL[dtype])


def test_float32_stays_float32():
    check_triton_case(KERNEL_CASES[1][1], "cuda", torch.float32, 1e-5)


@pytest.mark.parametrize("splits", [1, 2, 4, 16])
def test_decode_splits_agree(splits):
    kwargs = dict(cached=[1000, 31, 0, 257], q_lens=[1, 1, 1, 1], num_heads=32, num_kv_heads=8, head_dim=128)
    check_triton_case(kwargs, "cuda", torch.bfloat16, TOL[torch.bfloat16], num_splits=splits)


@pytest.mark.parametrize("splits", [None, 1, 8])
def test_decode_padding_rows(splits):
    check_decode_padding_rows("cuda", torch.bfloat16, splits)


def test_fresh_inputs_each_run_differ():
    """Guards the guard: two cases with different seeds are different inputs."""
    a = make_case([3], [1], device="cuda", seed=1)
    b = make_case([3], [1], device="cuda", seed=2)
    assert not torch.equal(a.query, b.query)
