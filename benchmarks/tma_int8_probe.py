"""Experiment (issue 7): does staging the int8 decode GEMM's weights through shared memory with
TMA read closer to an H200's bandwidth than kernels/int8_mma.py, which loads them straight into
registers and tops out near 3.76 TB/s (88% of copy) at BLOOM-176B TP4's shapes?

The reading it tests: a register-fed kernel keeps only ~27 KB of weights in flight per SM, about
what Little's law asks at 4.3 TB/s; a TMA ring several stages deep keeps far more, with one
instruction per box instead of one per 16 bytes.

The kernel here keeps int8_mma.cu's data path (its helpers are compiled in: conversion, MMA,
operand order with 128-wide K blocks) and changes where the weights come from:
- a producer warp issues 2-D TMA loads (`cuTensorMapEncodeTiled`, 128-byte swizzle) of
  [16 * NT rows x 128 bytes] boxes, WARPS boxes a stage, into a STAGES-deep ring guarded by
  mbarriers (full: bytes landed; empty: every consumer warp has its fragments in registers);
- consumer warp w takes box w of every stage: thread (g, t) reads bytes 32t .. 32t + 31 of rows g
  and g + 8 of each tile, at the swizzled 16-byte chunk (2t + u) ^ g (no bank conflicts), then
  converts and multiplies exactly as int8_mma.cu does.

It also reads weights stored tile by tile ([N / 16, K / 128, 16, 128]: a tile's whole K one
contiguous stream) with 16-row boxes. Not wired into the engine: it checks itself against the
reference on random inputs, then times its variants beside int8_mma's under CUDA-graph replay
(the tuner's timer, weights rotating past L2). Run it under a timeout (an mbarrier mistake would
hang), on the device:
    PYTHONPATH=src timeout 300 python3 benchmarks/tma_int8_probe.py [--rows 4]

Answer (4x H200, two runs, benchmarks/RESULTS.md, eleventh session): no. Rings of 2 stages
matched int8_mma (from 3.5% faster to 8% slower), deeper ones were slower, and the tiled layout
changed nothing, for TMA or for int8_mma itself (commit ddf4c5d read it through a TILED define).
Bytes in flight were not the limit. Nor was the balance of work over the SMs: a stream-K form
of int8_mma (commit 3872b95) was slower too.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import finish, stage  # noqa: E402

from shardserve.kernels import int8_mma  # noqa: E402
from shardserve.kernels.cuda_launch import _driver, launch  # noqa: E402

SHAPES = {"qkv": (10752, 14336), "dense": (14336, 3584), "fc1": (14336, 14336)}  # BLOOM-176B TP4
BOX_BYTES = 128  # a box row: one 128-byte swizzle span of K
# (tiled, nt, warps, stages): run 1 of the 2026-11-28 session found deeper rings slower
VARIANTS = [(False, 1, 4, 2), (False, 2, 4, 2)] + [(True, nt, w, st) for nt, w, st in
                                                 ((1, 4, 2), (1, 4, 4), (2, 4, 2), (1, 8, 2), (2, 8, 2))]
MMA_VARIANTS = [(nt, warps, pipe) for nt, warps, pipe in ((1, 4, 1), (2, 8, 1), (1, 8, 1), (2, 4, 1), (1, 4, 2))]

KERNEL = r"""
typedef unsigned long long u64;
struct __align__(64) TensorMap { u64 opaque[16]; };

__device__ __forceinline__ u32 shared_addr(const void *p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u64 *bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(shared_addr(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_expect_bytes(u64 *bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                 :: "r"(shared_addr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u64 *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(shared_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_wait(u64 *bar, u32 parity) {
    asm volatile("{\n .reg .pred done;\n WAIT:\n"
                 " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 " @!done bra WAIT;\n}" :: "r"(shared_addr(bar)), "r"(parity) : "memory");
}

__device__ __forceinline__ void tma_box(void *dst, const TensorMap *map, u64 *bar, int k, int n) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];"
                 :: "r"(shared_addr(dst)), "l"((u64)map), "r"(k), "r"(n), "r"(shared_addr(bar)) : "memory");
}

// Program: 16 * NT output features. Warps 0 .. WARPS - 1 consume, warp WARPS produces.
extern "C" __global__ void __launch_bounds__((WARPS + 1) * 32)
KERNEL_NAME(const __grid_constant__ TensorMap wmap, const u16 *__restrict__ x, const float *__restrict__ scale,
            u16 *__restrict__ out, int M, int N, int K, int stride_xm, int stride_om) {
    constexpr int BOX = 16 * NT * 128, STAGE = WARPS * BOX;
    extern __shared__ unsigned char dynamic[];
    // 128-byte swizzled boxes must start on 1024-byte boundaries of the shared window.
    unsigned char *ring = dynamic + ((1024 - (shared_addr(dynamic) & 1023)) & 1023);
    u64 *full = (u64 *)(ring + STAGES * STAGE), *empty = full + STAGES;
    __shared__ float partial[WARPS][NT * 4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * (16 * NT);
    const int kblocks = K / 128, rounds = (kblocks + WARPS - 1) / WARPS;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], WARPS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    if (warp == WARPS) {
        if (lane == 0)  // weights are no predecessor's output: loading starts before the PDL wait
            for (int i = 0; i < rounds; ++i) {
                const int s = i % STAGES;
                const int boxes = min(WARPS, kblocks - i * WARPS);  // none past K
                mbar_wait(&empty[s], ((i / STAGES) & 1) ^ 1);  // the first round finds it free
                mbar_expect_bytes(&full[s], boxes * BOX);
                for (int b = 0; b < boxes; ++b)
#if TILED  // NT boxes of one tile's 16 rows: rows of 128 bytes, (tile, K block, row) in order
#pragma unroll
                    for (int j = 0; j < NT; ++j)
                        tma_box(ring + s * STAGE + b * BOX + j * 2048, &wmap, &full[s], 0,
                                ((n0 / 16 + j) * kblocks + i * WARPS + b) * 16);
#else
                    tma_box(ring + s * STAGE + b * BOX, &wmap, &full[s], (i * WARPS + b) * 128, n0);
#endif
            }
    } else {
        const int g = lane >> 2, t = lane & 3;
        const bool has_x = g < M;
        const u16 *xrow = x + (long long)(has_x ? g : 0) * stride_xm + 32 * t;
#if PDL
        asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
        for (int i = 0; i < rounds; ++i) {
            const int s = i % STAGES, kb = i * WARPS + warp;
            uint4 xv[4];
#pragma unroll
            for (int u = 0; u < 4; ++u)
                xv[u] = has_x && kb < kblocks ? *(const uint4 *)(xrow + kb * 128 + 8 * u) : make_uint4(0, 0, 0, 0);
            mbar_wait(&full[s], (i / STAGES) & 1);
            const unsigned char *box = ring + s * STAGE + warp * BOX;
            uint4 wv[NT][2][2];  // rows g and g + 8 of each tile, 16-byte chunks 2t and 2t + 1
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int u = 0; u < 2; ++u)  // row 16j + 8h + g: its chunk c sits at c ^ g
                        wv[j][h][u] = *(const uint4 *)(box + (16 * j + 8 * h + g) * 128 + (((2 * t + u) ^ g) << 4));
            __syncwarp();
            if (lane == 0)
                mbar_arrive(&empty[s]);
            if (kb < kblocks) {
#pragma unroll
                for (int q = 0; q < 8; ++q) {  // MMA step q: bytes 4q .. 4q + 3 of the thread's 32
                    const u32 b0 = word(xv[q >> 1], (2 * q) & 3), b1 = word(xv[q >> 1], (2 * q + 1) & 3);
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        u32 a0, a1, a2, a3;
                        convert4(word(wv[j][0][q >> 2], q & 3), a0, a2);
                        convert4(word(wv[j][1][q >> 2], q & 3), a1, a3);
                        mma(acc[j], a0, a1, a2, a3, b0, b1);
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) partial[warp][4 * j + r][lane] = acc[j][r];
    }
#if PDL
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    __syncthreads();
    for (int v = threadIdx.x; v < NT * 4 * 32; v += (WARPS + 1) * 32) {
        const int jr = v >> 5, l = v & 31, j = jr >> 2, r = jr & 3;
        const int n = n0 + 16 * j + (l >> 2) + 8 * (r >> 1), m = 2 * (l & 3) + (r & 1);
        if (n < N && m < M) {
            float sum = 0.0f;
#pragma unroll
            for (int q = 0; q < WARPS; ++q) sum += partial[q][jr][l];
            out[(long long)m * stride_om + n] = float_to_half(sum * scale[n]);
        }
    }
}
"""


def source(bf16: bool, tiled: bool, nt: int, warps: int, stages: int, pdl: bool = False) -> str:
    """The int8 kernels' helpers (int8_common.cuh), then the kernel above."""
    helpers = Path(int8_mma.__file__).with_name("int8_common.cuh").read_text()
    defines = {"BF16": int(bf16), "TILED": int(tiled), "NT": nt, "WARPS": warps, "STAGES": stages,
               "PDL": int(pdl), "KERNEL_NAME": kernel_name(bf16, tiled, nt, warps, stages)}
    return "".join(f"#define {k} {v}\n" for k, v in defines.items()) + helpers + KERNEL


def kernel_name(bf16: bool, tiled: bool, nt: int, warps: int, stages: int) -> str:
    return f"tma_int8_{'bf16' if bf16 else 'fp16'}{'_tiled' if tiled else ''}_nt{nt}_w{warps}_s{stages}"


def shared_bytes(nt: int, warps: int, stages: int) -> int:
    """The ring, its 2 x STAGES mbarriers, and 1 KB to align the ring (the static partials apart)."""
    return stages * warps * 16 * nt * BOX_BYTES + 16 * stages + 1024


def tile_layout(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 -> the same bytes tile by tile, [N / 16, K / 128, 16, 128], viewed as [N, K]:
    a 16-row tile's 128-wide K block is 2 KB in one piece, the tile's whole K one stream."""
    n, k = weight.shape
    return weight.view(n // 16, 16, k // BOX_BYTES, BOX_BYTES).permute(0, 2, 1, 3).contiguous().view(n, k)


_MAX_DYNAMIC_SHARED = 8  # CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_compiled: dict = {}
_maps: dict = {}


def _kernel(bf16: bool, tiled: bool, nt: int, warps: int, stages: int):
    key = (bf16, tiled, nt, warps, stages)
    if key not in _compiled:
        kernel = torch.cuda._compile_kernel(source(*key), kernel_name(*key))
        status = _driver().cuFuncSetAttribute(kernel.func, _MAX_DYNAMIC_SHARED, shared_bytes(nt, warps, stages))
        if status:
            raise RuntimeError(f"cuFuncSetAttribute failed with CUDA driver error {status}")
        _compiled[key] = kernel
    return _compiled[key]


def tensor_map(weight: torch.Tensor, tiled: bool, nt: int) -> ctypes.Array:
    """A 2-D TMA descriptor of the int8 weight with the 128-byte swizzle, in a 64-byte aligned host
    buffer kept per weight pointer. Row-major [N, K]: [16 nt rows x 128 bytes] boxes. Tiled: a
    column of 128-byte rows, 16-row boxes."""
    key = (weight.data_ptr(), tuple(weight.shape), tiled, nt)
    if key not in _maps:
        n, k = weight.shape
        holder = ctypes.create_string_buffer(128 + 64)
        aligned = (ctypes.addressof(holder) + 63) & ~63
        dims = (ctypes.c_uint64 * 2)(*((BOX_BYTES, n * k // BOX_BYTES) if tiled else (k, n)))
        strides = (ctypes.c_uint64 * 1)(BOX_BYTES if tiled else k)  # bytes between rows
        box = (ctypes.c_uint32 * 2)(BOX_BYTES, 16 if tiled else 16 * nt)
        unit = (ctypes.c_uint32 * 2)(1, 1)
        lib = _driver()
        # uint8 data (0), no interleave (0), 128-byte swizzle (3), L2 promotion 256 B (3), no fill (0)
        status = lib.cuTensorMapEncodeTiled(ctypes.c_void_p(aligned), 0, 2, ctypes.c_void_p(weight.data_ptr()),
                                            dims, strides, box, unit, 0, 3, 3, 0)
        if status:
            raise RuntimeError(f"cuTensorMapEncodeTiled failed with CUDA driver error {status}")
        _maps[key] = (holder, (ctypes.c_uint64 * 16).from_address(aligned))
    return _maps[key][1]


def tma_int8(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, tiled: bool, nt: int, warps: int,
             stages: int) -> torch.Tensor:
    """x2 [m <= 8, K] bf16 / fp16 @ (weight [N, K] int8 * scale[:, None]).T, K a multiple of 128;
    weight in tile_layout where tiled."""
    m, k = x2.shape
    n = weight.shape[0]
    assert m <= 8 and k % BOX_BYTES == 0 and weight.is_contiguous() and x2.stride(1) == 1
    out = x2.new_empty((m, n))
    kernel = _kernel(x2.dtype == torch.bfloat16, tiled, nt, warps, stages)
    launch(kernel, (-(-n // (16 * nt)), 1, 1), (32 * (warps + 1), 1, 1),
           [tensor_map(weight, tiled, nt), x2, scale, out, m, n, k, x2.stride(0), out.stride(0)], pdl=False,
           shared_mem_bytes=shared_bytes(nt, warps, stages))
    return out


def checked_time(row: dict, label: str, fn, weight: torch.Tensor, ref: torch.Tensor) -> None:
    """row[label]: fn's time under graph replay (us) if its output matches ref, else what went wrong."""
    from shardserve.kernels.tuned_gemm import _graph_time_us

    try:
        got = fn(weight)
        torch.cuda.synchronize()
        err = float((got.float() - ref).norm() / ref.norm())
        row[label] = round(_graph_time_us(fn, weight), 2) if err < 1e-2 else f"wrong: relative error {err:.2e}"
    except Exception as e:  # report, keep going
        row[label] = f"error: {e!r}"[:200]


def check_and_time(rows: int) -> list[dict]:
    from gpu_single import weight_copies

    from shardserve.kernels.weight_formats import dequantize

    results = []
    for name, (n, k) in SHAPES.items():
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        weight, scale = weight_copies(n, k, torch.bfloat16, torch.int8, copies=1)[0]
        tiled = tile_layout(weight)
        ref = x.float() @ dequantize(weight, scale, torch.float32).T
        row = {"shape": name, "n": n, "k": k, "rows": rows}
        for nt, warps, pipe in MMA_VARIANTS:
            fn = partial(int8_mma.int8_mma, x, scale=scale, bias=None, nt=nt, warps=warps, pipe=pipe, kw=2)
            checked_time(row, f"mma nt{nt} w{warps} p{pipe}", fn, weight, ref)
        for is_tiled, nt, warps, stages in VARIANTS:
            fn = partial(tma_int8, x, scale=scale, tiled=is_tiled, nt=nt, warps=warps, stages=stages)
            checked_time(row, f"tma{' tiled' if is_tiled else ''} nt{nt} w{warps} s{stages}", fn,
                         tiled if is_tiled else weight, ref)
        row["weight_MB"] = n * k / 1e6
        print(row, flush=True)
        results.append(row)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4)
    args = parser.parse_args()
    stage("tma_int8_probe", lambda: check_and_time(args.rows), 30, 540)
    finish()
