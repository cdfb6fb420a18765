"""Launching a CUDA C kernel compiled by `torch.cuda._compile_kernel` with the programmatic-
serialization attribute that lets it start before its predecessor has finished (kernels/pdl.py):
torch's own launcher calls cuLaunchKernel, which takes no attributes; cuLaunchKernelEx does.
NVIDIA builds only: the kernels that use it are never offered on HIP."""

from __future__ import annotations

import ctypes
import functools

import torch

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, then a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("value_rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem_bytes", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)),
                ("num_attrs", ctypes.c_uint)]


@functools.cache
def _driver() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p,
                                     ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    return lib


def launch(kernel, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, pdl: bool,
           shared_mem_bytes: int = 0) -> None:
    """kernel(*args) on the current stream; args are CUDA tensors (passed as pointers), ints (C
    int) and ctypes objects (passed by value: a struct such as a TMA descriptor). pdl: launched
    with programmatic stream serialization (the kernel must wait with griddepcontrol.wait before
    it reads what its predecessor writes). shared_mem_bytes: dynamic shared memory."""
    holders = [_holder(a) for a in args]
    params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
    attr = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
    config = _LaunchConfig(grid=(ctypes.c_uint * 3)(*grid), block=(ctypes.c_uint * 3)(*block),
                           shared_mem_bytes=shared_mem_bytes, stream=torch.cuda.current_stream().cuda_stream,
                           attrs=ctypes.pointer(attr) if pdl else None, num_attrs=int(pdl))
    status = _driver().cuLaunchKernelEx(ctypes.byref(config), kernel.func, params, None)
    if status:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUDA driver error {status}")


def _holder(arg):
    """A ctypes object holding one kernel argument's value, whose address the driver reads."""
    if isinstance(arg, torch.Tensor):
        return ctypes.c_void_p(arg.data_ptr())
    if isinstance(arg, ctypes.Array | ctypes.Structure):
        return arg
    return ctypes.c_int(arg)
