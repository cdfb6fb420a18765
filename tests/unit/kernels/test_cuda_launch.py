"""kernels/cuda_launch.py hands the driver its own structs: their layout must be the C ABI's
(cuda.h, 64-bit), or cuLaunchKernelEx reads the grid, the stream or the attributes from the wrong
bytes. The launch itself is tested on GPUs (tests/gpu/test_quant_kernels.py)."""

from __future__ import annotations

import ctypes

import torch

from shardserve.kernels.cuda_launch import _holder, _LaunchAttribute, _LaunchConfig


def test_launch_attribute_is_an_id_then_a_64_byte_value_at_offset_8():
    assert ctypes.sizeof(_LaunchAttribute) == 72
    assert _LaunchAttribute.value.offset == 8


def test_launch_config_matches_cuda_h():
    # seven unsigned ints, the stream (8-byte aligned), the attribute pointer, their count
    assert [getattr(_LaunchConfig, f).offset for f in ("grid", "block", "shared_mem_bytes", "stream", "attrs",
                                                      "num_attrs")] == [0, 12, 24, 32, 40, 48]
    assert ctypes.sizeof(_LaunchConfig) == 56


def test_arguments_are_held_as_the_kernel_takes_them():
    """A tensor by its data pointer, an int as a C int, a ctypes struct or array by value."""
    x = torch.arange(4.0)
    assert ctypes.c_void_p(x.data_ptr()).value == _holder(x).value
    assert isinstance(_holder(7), ctypes.c_int) and _holder(7).value == 7
    descriptor = (ctypes.c_uint64 * 16)(*range(16))
    assert _holder(descriptor) is descriptor
