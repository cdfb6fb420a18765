"""kernels/cuda_launch.py hands the driver its own structs: their layout must be the C ABI's
(cuda.h, 64-bit), or cuLaunchKernelEx reads the grid, the stream or the attributes from the wrong
bytes. The launch itself is tested on GPUs (tests/gpu/test_quant_kernels.py)."""

from __future__ import annotations

import ctypes

from shardserve.kernels.cuda_launch import _LaunchAttribute, _LaunchConfig


def test_launch_attribute_is_an_id_then_a_64_byte_value_at_offset_8():
    assert ctypes.sizeof(_LaunchAttribute) == 72
    assert _LaunchAttribute.value.offset == 8


def test_launch_config_matches_cuda_h():
    # seven unsigned ints, the stream (8-byte aligned), the attribute pointer, their count
    assert [getattr(_LaunchConfig, f).offset for f in ("grid", "block", "shared_mem_bytes", "stream", "attrs",
                                                      "num_attrs")] == [0, 12, 24, 32, 40, 48]
    assert ctypes.sizeof(_LaunchConfig) == 56
