"""Decode GEMM for int8 weights with the work spread evenly over the SMs: y = x @ (W * scale).T
(+ b) for at most 8 rows, in CUDA C (int8_streamk.cu beside this file, on int8_common.cuh's
helpers) compiled at run time by NVRTC, as kernels/int8_mma.py is.

Why: int8_mma gives each program whole 16-feature tiles, so an SM's share of the weights is a
whole number of tiles. BLOOM-176B's qkv at TP4 has 672 tiles for 132 SMs: 12 SMs run a sixth
tile while the rest wait. Nsight Compute on fc1 (896 tiles, 4 rows, an H200) counted the SMs
active for 88% of the kernel's cycles, and the profile of a BLOOM decode step put qkv at 76% of
copy bandwidth against fc1's 86% (benchmarks/RESULTS.md, eleventh session). Neither deeper
weight pipelines (TMA rings of 2-6 stages) nor tile-contiguous weights read faster
(benchmarks/tma_int8_probe.py): the loss is in the balance, not in the loads.

So the work is cut by the SMs, not by the tiles (stream-K): a unit is one tile's 128-wide K
block, the grid is `programs_per_sm` programs on every SM, and each warp takes an equal run of
consecutive units. A run that covers a whole tile writes its output directly; runs that share a
tile add their float32 partial sums into a workspace ([tiles * 16, 8] float32 with a count of
K blocks per tile) and the run that completes the count finishes the tile (scale, bias, output)
and zeroes its workspace and count for the next call. Inside a warp the data path is
int8_mma's with 128-wide K blocks: weights loaded straight into the MMA's registers (the tile
as its left operand), bytes converted by the same bit tricks.

Workspaces are kept per (device, tile count) and allocated on first use, which must not be
inside a CUDA graph capture (the tuner runs every config eagerly first). Calls on one device
share them in stream order: a kernel touches its workspace only after its programmatic-launch
wait, when its predecessor has finished. The reference is `linear_reference`
(kernels/weight_formats.py), as for every decode GEMM.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from shardserve.kernels import int8_mma
from shardserve.kernels.cuda_launch import launch
from shardserve.kernels.pdl import pdl_on

MAX_ROWS = 8
K_BLOCK = 128  # K of a unit; K must be a multiple
# Every variant, (warps a program, K blocks in flight a warp, programs on every SM): the sweep's
# grid (benchmarks/gemm_sweep.py --mma-only).
VARIANTS = [(warps, pipe, programs) for warps in (2, 4, 8) for pipe in (1, 2) for programs in (2, 3, 4, 6, 8, 12)
            if warps * programs <= 48]


def kernel_name(bf16: bool, warps: int, pipe: int, pdl: bool) -> str:
    return f"int8_streamk_{'bf16' if bf16 else 'fp16'}_w{warps}_p{pipe}{'_pdl' if pdl else ''}"


def source(bf16: bool, warps: int, pipe: int, pdl: bool = False) -> str:
    defines = {"BF16": int(bf16), "WARPS": warps, "PIPE": pipe, "PDL": int(pdl),
               "KERNEL_NAME": kernel_name(bf16, warps, pipe, pdl)}
    here = Path(__file__).parent
    return ("".join(f"#define {k} {v}\n" for k, v in defines.items()) + (here / "int8_common.cuh").read_text()
            + (here / "int8_streamk.cu").read_text())


@functools.cache
def _compiled(device_index: int, bf16: bool, warps: int, pipe: int, pdl: bool):
    name = kernel_name(bf16, warps, pipe, pdl)
    try:
        with torch.cuda.device(device_index):
            return torch.cuda._compile_kernel(source(bf16, warps, pipe, pdl), name)
    except (OSError, RuntimeError) as e:  # no libnvrtc, or a compile error
        raise int8_mma.KernelUnavailable(f"{name}: {e}") from e


def shape_applies(m: int, k: int, weight_dtype: torch.dtype) -> bool:
    """Whether the kernel can take an [m, k] x [k, N] product by a weight of weight_dtype here (as
    int8_mma, whose switch and NVRTC check it shares: extra {"int8_mma": False} turns both off)."""
    return int8_mma.shape_applies(m, k, weight_dtype, kw=K_BLOCK // int8_mma.K_BLOCK)


_workspaces: dict = {}


def workspace(device: torch.device, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The zeroed float32 partial sums [tiles * 16 * 8] and int32 counts [tiles] that calls with
    `tiles` 16-feature tiles on `device` share."""
    key = (device, tiles)
    if key not in _workspaces:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("int8_streamk: the first call of a shape must run before a CUDA graph captures it")
        _workspaces[key] = (torch.zeros(tiles * 16 * MAX_ROWS, dtype=torch.float32, device=device),
                            torch.zeros(tiles, dtype=torch.int32, device=device))
    return _workspaces[key]


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def int8_streamk(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 warps: int = 4, pipe: int = 1, programs_per_sm: int = 8) -> torch.Tensor:
    """x2 [m, K] fp16/bf16 (m <= 8), weight [N, K] int8, scale [N] float32, bias [N] in x2's dtype
    or None -> x2 @ (weight * scale[:, None]).T (+ bias) [m, N] in x2's dtype."""
    kw = K_BLOCK // int8_mma.K_BLOCK
    assert int8_mma.applies(x2, weight, kw) and scale.dtype == torch.float32 and scale.is_contiguous()
    if x2.stride(0) % 8 or x2.data_ptr() % 16:  # 16-byte loads of each row
        x2 = x2.clone()
    m, k = x2.shape
    n = weight.shape[0]
    assert -(-n // 16) * (k // K_BLOCK) < 2**31  # the kernel counts units in int
    out = x2.new_empty((m, n))
    if m and n:
        index = x2.device.index or 0
        pdl = pdl_on(x2)
        kernel = _compiled(index, x2.dtype == torch.bfloat16, warps, pipe, pdl)
        partials, counts = workspace(x2.device, -(-n // 16))
        has_bias = bias is not None
        if has_bias:  # the kernel reads the bias as x's 16-bit type
            bias = bias.to(x2.dtype).contiguous()
        args = [x2, weight, scale, bias if has_bias else out, out, partials, counts, m, n, k, x2.stride(0),
                out.stride(0), int(has_bias)]
        launch(kernel, (_sm_count(index) * programs_per_sm, 1, 1), (32 * warps, 1, 1), args, pdl)
    return out
