"""Decode GEMM for int8 weights below Triton: y = x @ (W * scale).T (+ b) for at most 8 rows of
fp16/bf16 activations, in CUDA C (int8_mma.cu beside this file, on int8_common.cuh's helpers)
compiled at run time by NVRTC (torch.cuda._compile_kernel: no compiler beyond what PyTorch's
CUDA build brings). This module holds what the kernel does and how Python builds, offers and
launches its variants.

Why not Triton: at 1-4 rows Triton's 8-bit kernels stage every weight tile through shared memory,
load it back, convert it and feed it to mma.sync; Nsight Compute found them bound by those
instructions and the pipeline's barriers (2.6-3.8 TB/s on an H200, where 16-bit tiles fed to
wgmma read 4.2; benchmarks/RESULTS.md). Here each thread loads its weights straight from global
memory into the registers the tensor core takes them from, with no shared memory and no barrier
in the loop:

- The weight tile is the MMA's left operand (m16n8k16: 16 output features by 16 of K), the
  activations its right one (8 columns: the rows of x, zero past M), the float32 result is the
  output's transpose.
- A dot product does not care in which order it visits K, so long as both operands agree. An
  m16n8k16 thread holds K lanes {2t, 2t+1, 2t+8, 2t+9} (t = lane % 4) of its rows; we let lane
  t's four be the four consecutive bytes 16 KW t + 4i .. 16 KW t + 4i + 3 of a (64 KW)-wide K
  block at MMA step i = 0 .. 4 KW - 1. So one 16-byte load of a weight row feeds four MMAs, and
  the activations come as 16-byte loads of the same columns. With KW = 2 the four threads of a
  row read its 128 bytes, a whole cache line, where KW = 1 splits each line between two warps:
  3-9% faster at BLOOM-176B TP4's GEMMs at 4 rows on an H100 (benchmarks/RESULTS.md, ninth
  session).
- An int8 byte becomes an exact 16-bit float by bit tricks: for fp16, the byte (offset by 128)
  goes into the mantissa of 1024.0 and 1152.0 is subtracted (two values per instruction pair);
  for bf16, whose 7-bit mantissa cannot hold a byte, the same is done in float32 (2^23) and the
  upper halves of two floats are packed (exact: every int8 is a bf16).
- A block's WARPS warps split K (interleaved K blocks, PIPE of them in flight a warp) and sum
  their accumulators through shared memory once at the end, where the per-row scale and the
  bias are applied in float32, as the Triton kernels do.
- Under programmatic dependent launch (kernels/pdl.py; launched by kernels/cuda_launch.py) a
  program loads its first weights before it waits for its predecessor, and lets its successor
  launch after its main loop, as the Triton GEMMs do.

Applies to int8 weights with K a multiple of 64 KW and contiguous, 16-byte aligned rows
(`applies`; unaligned activations are copied first); the tuner (kernels/tuned_gemm.py) offers it
as KernelConfig(kernel="mma", block_n=16 * NT, block_k=64 * KW, num_warps=WARPS,
num_stages=PIPE) and runs it only where it measured fastest. With 64-wide blocks, on an H200 at
4 rows, it beat every Triton config at every Llama-3-8B and BLOOM-176B TP4 shape, by 1-25% (up to
3.59 TB/s); at 1 row the Triton GEMV stays faster (benchmarks/RESULTS.md, eighth session). The
reference is `linear_reference` (kernels/weight_formats.py), as for every decode GEMM.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from shardserve.kernels.cuda_launch import launch
from shardserve.kernels.pdl import pdl_on

MAX_ROWS = 8  # the MMA's narrow side
K_BLOCK = 64  # K of one 16-byte load of a weight row by 4 threads; K must be a multiple
NT_CHOICES = (1, 2, 4)  # 16-feature tiles a warp (and a block)
WARP_CHOICES = (4, 8, 16)  # warps splitting K in a block
KW_CHOICES = (1, 2)  # 16-byte loads a thread makes of each row per K block: 64- or 128-wide blocks
PIPE_CHOICES = (1, 2, 3)  # K blocks in flight a warp
# Every variant, (NT, WARPS, PIPE, KW): the sweep's grid (benchmarks/gemm_sweep.py --mma-only).
VARIANTS = [(nt, warps, pipe, kw) for kw in KW_CHOICES for nt in NT_CHOICES for warps in WARP_CHOICES
            for pipe in PIPE_CHOICES]


def kernel_name(bf16: bool, nt: int, warps: int, pipe: int, kw: int = 1, pdl: bool = False) -> str:
    return f"int8_mma_{'bf16' if bf16 else 'fp16'}_nt{nt}_w{warps}_p{pipe}_kw{kw}{'_pdl' if pdl else ''}"


def source(bf16: bool, nt: int, warps: int, pipe: int, kw: int = 1, pdl: bool = False) -> str:
    """The CUDA source of one variant; pdl (sm_90+): it waits for its predecessor after loading its
    first weights, and lets its successor launch after its main loop (kernels/pdl.py)."""
    defines = {"BF16": int(bf16), "NT": nt, "WARPS": warps, "PIPE": pipe, "KW": kw, "KBLOCK": K_BLOCK * kw,
               "PDL": int(pdl), "KERNEL_NAME": kernel_name(bf16, nt, warps, pipe, kw, pdl)}
    return "".join(f"#define {k} {v}\n" for k, v in defines.items()) + _cuda_source()


@functools.cache
def _cuda_source() -> str:
    here = Path(__file__).parent
    return (here / "int8_common.cuh").read_text() + (here / "int8_mma.cu").read_text()


_enabled = True


def set_enabled(enabled: bool) -> None:
    """EngineConfig.extra {"int8_mma": False} keeps the kernel out of the tuner's candidates (to
    measure what it buys)."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


def available() -> bool:
    """Whether the kernel is on and this PyTorch can compile CUDA C at run time (NVRTC) for an
    NVIDIA GPU of compute capability 8.0 or later (mma.sync with bf16)."""
    return _enabled and _supported()


@functools.cache
def _supported() -> bool:
    return (hasattr(torch.cuda, "_compile_kernel") and torch.version.hip is None and torch.cuda.is_available()
            and torch.cuda.get_device_capability() >= (8, 0))


class KernelUnavailable(RuntimeError):
    """NVRTC could not build the kernel here (the tuner then skips the config)."""


@functools.cache
def _compiled(device_index: int, bf16: bool, nt: int, warps: int, pipe: int, kw: int, pdl: bool):
    name = kernel_name(bf16, nt, warps, pipe, kw, pdl)
    try:
        with torch.cuda.device(device_index):
            return torch.cuda._compile_kernel(source(bf16, nt, warps, pipe, kw, pdl), name)
    except (OSError, RuntimeError) as e:  # no libnvrtc, or a compile error
        raise KernelUnavailable(f"{name}: {e}") from e


def shape_applies(m: int, k: int, weight_dtype: torch.dtype, kw: int = 1) -> bool:
    """Whether the kernel with kw-wide K blocks can take an [m, k] x [k, N] product by a weight of
    weight_dtype here: int8, at most MAX_ROWS rows, K a whole number of K blocks (the tuner asks
    before it has tensors)."""
    return weight_dtype == torch.int8 and m <= MAX_ROWS and k % (K_BLOCK * kw) == 0 and available()


def applies(x2: torch.Tensor, weight: torch.Tensor, kw: int = 1) -> bool:
    """x2 [m, K] rows with unit stride; weight [N, K] int8, contiguous and 16-byte aligned."""
    m, k = x2.shape
    return (x2.is_cuda and x2.dtype in (torch.float16, torch.bfloat16) and weight.is_contiguous()
            and weight.shape[1] == k and weight.data_ptr() % 16 == 0 and shape_applies(m, k, weight.dtype, kw))


def int8_mma(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             nt: int = 2, warps: int = 8, pipe: int = 1, kw: int = 1) -> torch.Tensor:
    """x2 [m, K] fp16/bf16 (m <= 8), weight [N, K] int8, scale [N] float32, bias [N] in x2's dtype
    or None -> x2 @ (weight * scale[:, None]).T (+ bias) [m, N] in x2's dtype."""
    assert applies(x2, weight, kw) and scale.dtype == torch.float32 and scale.is_contiguous()
    if x2.stride(0) % 8 or x2.data_ptr() % 16:  # 16-byte loads of each row
        x2 = x2.clone()
    m, k = x2.shape
    n = weight.shape[0]
    out = x2.new_empty((m, n))
    if m and n:
        pdl = pdl_on(x2)
        kernel = _compiled(x2.device.index or 0, x2.dtype == torch.bfloat16, nt, warps, pipe, kw, pdl)
        has_bias = bias is not None
        if has_bias:  # the kernel reads the bias as x's 16-bit type
            bias = bias.to(x2.dtype).contiguous()
        args = [x2, weight, scale, bias if has_bias else out, out, m, n, k, x2.stride(0), out.stride(0),
                int(has_bias)]
        launch(kernel, (-(-n // (16 * nt)), 1, 1), (32 * warps, 1, 1), args, pdl)
    return out
