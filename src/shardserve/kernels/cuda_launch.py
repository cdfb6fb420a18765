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


def launch(kernel, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, pdl: bool) -> None:
    """kernel(*args) on the current stream; args are CUDA tensors (passed as pointers) and ints
    (C int). pdl: launched with programmatic stream serialization (the kernel must wait with
    griddepcontrol.wait before it reads what its predecessor writes)."""
    holders = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args]
    params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
    attr = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
    config = _LaunchConfig(grid=(ctypes.c_uint * 3)(*grid), block=(ctypes.c_uint * 3)(*block), shared_mem_bytes=0,
                           stream=torch.cuda.current_stream().cuda_stream,
                           attrs=ctypes.pointer(attr) if pdl else None, num_attrs=int(pdl))
    status = _driver().cuLaunchKernelEx(ctypes.byref(config), kernel.func, params, None)
    if status:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUDA driver error {status}")
