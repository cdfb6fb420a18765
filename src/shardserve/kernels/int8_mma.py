"""Decode GEMM for int8 weights below Triton: y = x @ (W * scale).T (+ b) for at most 8 rows of
fp16/bf16 activations, in CUDA C compiled at run time by NVRTC (torch.cuda._compile_kernel: no
compiler beyond what PyTorch's CUDA build brings).

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

import torch

from shardserve.kernels.cuda_launch import launch
from shardserve.kernels.pdl import pdl_on

MAX_ROWS = 8  # the MMA's narrow side
K_BLOCK = 64  # K of one 16-byte load of a weight row by 4 threads; K must be a multiple
NT_CHOICES = (1, 2, 4)  # 16-feature tiles a warp (and a block)
WARP_CHOICES = (4, 8, 16)  # warps splitting K in a block
KW_CHOICES = (1, 2)  # 16-byte loads a thread makes of each row per K block: 64- or 128-wide blocks

_SOURCE = r"""
typedef unsigned int u32;
typedef unsigned short u16;

// Four int8 weights (one word) -> two registers of two 16-bit floats: bytes (0, 1) and (2, 3).
__device__ __forceinline__ void convert4(u32 q, u32 &lo, u32 &hi) {
    u32 u = q ^ 0x80808080u;  // w + 128, as unsigned bytes
#if BF16
    const u32 base = 0x4B000000u;  // 2^23: its mantissa's low byte takes u
    float f0 = __uint_as_float(__byte_perm(u, base, 0x7440)) - 8388736.0f;
    float f1 = __uint_as_float(__byte_perm(u, base, 0x7441)) - 8388736.0f;
    float f2 = __uint_as_float(__byte_perm(u, base, 0x7442)) - 8388736.0f;
    float f3 = __uint_as_float(__byte_perm(u, base, 0x7443)) - 8388736.0f;
    lo = __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
    hi = __byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
#else
    const u32 magic = 0x64806480u;  // 1152.0 = 1024 + 128, twice
    u32 a = __byte_perm(u, 0x64646464u, 0x4140);  // 1024 + u0, 1024 + u1
    u32 b = __byte_perm(u, 0x64646464u, 0x4342);
    asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(a), "r"(magic));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(b), "r"(magic));
#endif
}

__device__ __forceinline__ void mma(float *c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Weights are read once: keep them out of L1.
__device__ __forceinline__ uint4 load_stream(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ float half_to_float(u16 h) {
#if BF16
    return __uint_as_float(((u32)h) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ u16 float_to_half(float f) {
    u16 h;
#if BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

__device__ __forceinline__ u32 word(const uint4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

struct Slot {
    uint4 w[NT][2][KW];  // rows g and g + 8 of each 16-feature tile: 16 * KW bytes of K each
    uint4 x[2 * KW];     // 16 * KW activations of row g
};

__device__ __forceinline__ void load_weights(Slot &slot, const signed char *const (&wrow)[NT][2], int kb) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int u = 0; u < KW; ++u) {
            slot.w[j][0][u] = load_stream(wrow[j][0] + kb * KBLOCK + 16 * u);
            slot.w[j][1][u] = load_stream(wrow[j][1] + kb * KBLOCK + 16 * u);
        }
}

__device__ __forceinline__ void load_x(Slot &slot, const u16 *xrow, bool has_x, int kb) {
#pragma unroll
    for (int u = 0; u < 2 * KW; ++u)
        slot.x[u] = has_x ? *(const uint4 *)(xrow + kb * KBLOCK + 8 * u) : make_uint4(0, 0, 0, 0);
}

// Program: 16 * NT output features; its WARPS warps take the KBLOCK-wide K blocks in turn.
extern "C" __global__ void __launch_bounds__(WARPS * 32)
KERNEL_NAME(const u16 *__restrict__ x, const signed char *__restrict__ w, const float *__restrict__ scale,
            const u16 *__restrict__ bias, u16 *__restrict__ out, int M, int N, int K, int stride_xm,
            int stride_om, int has_bias) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * (16 * NT);
    const int kblocks = K / KBLOCK;
    const signed char *wrow[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int n = min(n0 + 16 * j + 8 * h + g, N - 1);  // rows past N are read, never stored
            wrow[j][h] = w + (long long)n * K + 16 * KW * t;
        }
    const bool has_x = g < M;  // the MMA's columns past M multiply zeros
    const u16 *xrow = x + (long long)(has_x ? g : 0) * stride_xm + 16 * KW * t;
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    // Launched early (PDL), the program loads its first weights, which no kernel of the step
    // writes, while its predecessor still runs; then it waits for the activations.
    Slot slot[PIPE];
#pragma unroll
    for (int s = 0; s < PIPE; ++s)
        if (warp + s * WARPS < kblocks)
            load_weights(slot[s], wrow, warp + s * WARPS);
#if PDL
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#pragma unroll
    for (int s = 0; s < PIPE; ++s)
        if (warp + s * WARPS < kblocks)
            load_x(slot[s], xrow, has_x, warp + s * WARPS);
    for (int base = warp; base < kblocks; base += PIPE * WARPS) {
#pragma unroll
        for (int s = 0; s < PIPE; ++s) {
            const int kb = base + s * WARPS;
            if (kb < kblocks) {
#pragma unroll
                for (int i = 0; i < 4 * KW; ++i) {  // MMA step i: bytes 4i .. 4i + 3 of a row's 16 KW
                    const u32 b0 = word(slot[s].x[i >> 1], (2 * i) & 3);
                    const u32 b1 = word(slot[s].x[i >> 1], (2 * i + 1) & 3);
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        u32 a0, a1, a2, a3;
                        convert4(word(slot[s].w[j][0][i >> 2], i & 3), a0, a2);
                        convert4(word(slot[s].w[j][1][i >> 2], i & 3), a1, a3);
                        mma(acc[j], a0, a1, a2, a3, b0, b1);
                    }
                }
                if (kb + PIPE * WARPS < kblocks) {
                    load_weights(slot[s], wrow, kb + PIPE * WARPS);
                    load_x(slot[s], xrow, has_x, kb + PIPE * WARPS);
                }
            }
        }
    }
#if PDL
    asm volatile("griddepcontrol.launch_dependents;");  // late, as the Triton GEMMs (kernels/pdl.py)
#endif
    // acc[j][r]: feature n0 + 16j + g + 8 * (r >> 1), row 2t + (r & 1). Sum over the warps.
    __shared__ float partial[WARPS][NT * 4][32];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[warp][4 * j + r][lane] = acc[j][r];
    __syncthreads();
    for (int v = threadIdx.x; v < NT * 4 * 32; v += WARPS * 32) {
        const int jr = v >> 5, l = v & 31;
        const int j = jr >> 2, r = jr & 3;
        const int n = n0 + 16 * j + (l >> 2) + 8 * (r >> 1);
        const int m = 2 * (l & 3) + (r & 1);
        if (n < N && m < M) {
            float sum = 0.0f;
#pragma unroll
            for (int q = 0; q < WARPS; ++q) sum += partial[q][jr][l];
            sum *= scale[n];
            if (has_bias)
                sum += half_to_float(bias[n]);
            out[(long long)m * stride_om + n] = float_to_half(sum);
        }
    }
}
"""


def kernel_name(bf16: bool, nt: int, warps: int, pipe: int, kw: int = 1, pdl: bool = False) -> str:
    return f"int8_mma_{'bf16' if bf16 else 'fp16'}_nt{nt}_w{warps}_p{pipe}_kw{kw}{'_pdl' if pdl else ''}"


def source(bf16: bool, nt: int, warps: int, pipe: int, kw: int = 1, pdl: bool = False) -> str:
    """The CUDA source of one variant; pdl (sm_90+): it waits for its predecessor after loading its
    first weights, and lets its successor launch after its main loop (kernels/pdl.py)."""
    defines = {"BF16": int(bf16), "NT": nt, "WARPS": warps, "PIPE": pipe, "KW": kw, "KBLOCK": K_BLOCK * kw,
               "PDL": int(pdl), "KERNEL_NAME": kernel_name(bf16, nt, warps, pipe, kw, pdl)}
    return "".join(f"#define {k} {v}\n" for k, v in defines.items()) + _SOURCE


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
