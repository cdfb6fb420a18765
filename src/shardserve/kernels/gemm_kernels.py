"""The kernels behind `tuned_linear` (kernels/tuned_gemm.py): y = x @ W.T (+ b) by a stored weight,
in one of the formats of kernels/weight_formats.py (8-bit with per-row scales, or 16-bit).

Decode steps multiply a few rows of activations by every weight of the model, so their time is
the time to read the weights. The kernels read each weight once and accumulate in float32; an
8-bit weight byte is converted exactly in registers (kernels/weight_convert.py) and the
per-channel scale applied to the accumulator (half the bytes of a bf16 matmul), a 16-bit weight
goes to the tensor cores / FMAs as loaded (QUANTIZED=False: no conversion, no scale); the bias
is added in the same epilogue.
`run_config` runs one of five paths (`KernelConfig.kernel`):
  "dot"     `_gemm_kernel`: [BLOCK_M x BLOCK_K] activations times a [BLOCK_N x BLOCK_K] weight tile
            on tensor cores (tl.dot). Any batch; the only 8-bit kernel past GEMV_MAX_TOKENS rows.
            `swap_ab` puts the weight tile on the MMA's tall side (Hopper: wgmma instead of
            mma.sync at 16 rows), which the tuner offers 16-bit weights below 17 rows.
  "gemv"    `_gemv_kernel`: no tensor cores. Each program multiplies its float32 weight tile by
            the broadcast activation rows elementwise and reduces over K once at the end; for 1-2
            rows this skips the dot path's 16-row operand padding and register shuffles.
  "mma"     int8 weights, at most 8 rows: kernels/int8_mma.py, CUDA C that loads each weight
            straight into the tensor core's operand registers (block_n: a program's features,
            block_k: a K block, 64 or 128, num_warps: its warps splitting K, num_stages: K blocks
            in flight a warp). An input activation runs as its own kernel first.
  "cublas"  16-bit weights only: F.linear, exactly the call an unquantised layer makes; the
            tuner's first candidate and the untuned choice, so a kernel runs only where it
            measured faster (cuBLAS reads small decode weights at ~3.1-3.75 TB/s on an H200,
            against 4.2 TB/s copies).
  "dequant" 8-bit prefill (past DECODE_MAX_TOKENS rows, compute-bound): one Triton pass
            (kernels/weight_convert.py) writes the weight in the activation dtype (the
            reference's rounding, so the result is the reference's bit for bit), then one cuBLAS
            matmul: 3 bytes of traffic per weight on top of the 16-bit matmul. (16-bit prefill is
            plain cuBLAS.)
Either kernel may split K over programs that atomically add float32 partials into a zeroed
buffer, cast once at the end (one memset and one cast launch: worth it only where N alone leaves
SMs idle). The kernels' building blocks are in kernels/gemm_tiles.py.

Input activation (`input_act`, kernels/act_and_mul.py): the MLP's second matmul may be handed its
input before the activation, e.g. [gate | up] for gated SiLU. The kernels apply it in their
prologue, to each x tile as it is loaded (`act_tile`: gate at column k, up at column K + k,
float32 math rounded to the activation dtype as the reference rounds), so no activation kernel
and no round trip of its output through memory runs between the two matmuls (one launch and ~3 us
per layer at decode), with the bits of the unfused kernel on `act_kernel`'s output (up to the
order of a K split's atomic adds). The prologue recomputes the activation in every program that
reads an x tile, which can cost more than the separate kernel, so the unfused form is a config
too (`fuse_act=False`) and the tuner times both. "cublas" and "dequant" apply the activation
first (`apply_input_act`) and then multiply.

`linear_reference` (kernels/weight_formats.py: dequantise, then one ordinary matmul) is the
definition the kernels are tested against and the CPU path. Triton is optional: without it only
KernelConfig and `kernel_applies` are defined here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shardserve.kernels import _has_triton
from shardserve.kernels.act_and_mul import apply_input_act, split_input_act
from shardserve.kernels.int8_mma import K_BLOCK, int8_mma

if _has_triton:
    import triton
    import triton.language as tl

    from shardserve.kernels.act_and_mul import act_kernel
    from shardserve.kernels.gemm_tiles import (
        activation_tile,
        dot_k_tiles,
        program_tiles,
        store_tile,
        weight_tile,
    )
    from shardserve.kernels.pdl import pdl_args, pdl_launch_dependents, pdl_wait
    from shardserve.kernels.weight_convert import dequantize_fast

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class KernelConfig:
    block_m: int  # activation rows per program ("gemv": any power of two; "dot": >= 16)
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4
    kernel: str = "dot"  # "dot" | "gemv" | "mma" (int8) | "cublas" (16-bit) | "dequant" (8-bit prefill)
    # With an input activation, "dot" / "gemv": in the prologue (True) or by act_kernel first
    # ("mma": always first, False).
    fuse_act: bool = True
    # "dot" only: the weight tile is the MMA's left operand, W @ x.T (see `_gemm_kernel`).
    swap_ab: bool = False

    def __str__(self) -> str:  # for logs and benchmark tables
        if self.kernel in ("cublas", "dequant"):
            return self.kernel
        if self.kernel == "mma":
            return f"mma {self.block_n}x{self.block_k} warps {self.num_warps} in flight {self.num_stages}"
        return (f"{self.kernel} {self.block_m}x{self.block_n}x{self.block_k} split {self.split_k} "
                f"warps {self.num_warps} stages {self.num_stages}" + (" swapped" if self.swap_ab else "")
                + ("" if self.fuse_act else " act apart"))


DEQUANT = KernelConfig(0, 0, 0, 1, kernel="dequant")
CUBLAS = KernelConfig(0, 0, 0, 1, kernel="cublas")


@functools.lru_cache(maxsize=16)
def device_facts(device: torch.device) -> tuple[int, tuple[int, int]]:
    """(SM count, compute capability); the CPU (Triton's interpreter) answers as an H100."""
    if device.type != "cuda":
        return 132, (9, 0)
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count, (props.major, props.minor)


def kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `tuned_linear` takes this call: a CUDA GPU, half-precision activations, a row-major
    weight that is int8, fp8 on a GPU with fp8 conversions (compute capability >= 8.9), or in x's
    own dtype. (FP8 prefill on Hopper goes to fp8_scaled_mm before this is asked: layers/quant.py.)"""
    if not (_has_triton and x.is_cuda and x.dtype in HALF_DTYPES and weight.stride(-1) == 1):
        return False
    if weight.dtype == torch.float8_e4m3fn:
        return device_facts(x.device)[1] >= (8, 9)
    return weight.dtype in (torch.int8, x.dtype)


if _has_triton:

    # The dot and GEMV kernels: program (m tile, n tile, k split) -> out[m tile, n tile] (+)=
    # x[m, ks] @ W[n, ks].T (* scale), over this split's k_iters tiles of K (the last split may
    # run past K: masked). m tiles vary fastest, so the programs sharing a weight tile run
    # together and read it from HBM once. k_iters and M are runtime values, so one compiled
    # kernel per config serves every layer shape and batch of its row class (Triton still
    # pipelines the loads: cp.async in the sm_90 SASS). QUANTIZED=False: w_ptr holds the weight
    # in x's dtype, and scale_ptr is not read. ACT / GATED: the input activation
    # (`activation_tile`); K is the weight's, and x's rows are [gate | up] of 2 * K with GATED.
    # SWAP_AB: acc.T = W_tile @ x_tile.T, the weight tile as the MMA's left operand. Its BLOCK_N
    # rows fill the MMA's tall side, the few activation rows (padded to 16) its narrow side. On
    # Hopper that is a wgmma (m64n16k16) with the converted weights taken from registers, where
    # the unswapped tile (16 rows of x on the tall side: below wgmma's 64) compiles to mma.sync
    # (m16n8k16) (sm_90 PTX of both, 64x256 tiles).
    @triton.jit(do_not_specialize=["M", "k_iters"])
    def _gemm_kernel(
        x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, k_iters, stride_xm, stride_wn, stride_om,
        QUANTIZED: tl.constexpr, W_FP8: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
        ACT: tl.constexpr, GATED: tl.constexpr, SWAP_AB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
        PDL: tl.constexpr,
    ):
        pdl_wait(PDL)  # the successor launches after the main loop (kernels/pdl.py says why)
        rm, rn, rk, m_mask, n_mask, pid_k = program_tiles(M, N, BLOCK_M, BLOCK_N, BLOCK_K)
        x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
        w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
        k_first = pid_k * k_iters
        acc = dot_k_tiles(x_rows, w_rows, rk, m_mask, n_mask, k_first, k_first + k_iters, K, QUANTIZED, W_FP8,
                          ACT, GATED, SWAP_AB, BLOCK_M, BLOCK_N, BLOCK_K, NUM_STAGES)
        pdl_launch_dependents(PDL)
        store_tile(acc, rm, rn, m_mask, n_mask, pid_k, scale_ptr, bias_ptr, out_ptr, stride_om,
                   QUANTIZED, HAS_BIAS, ATOMIC)

    @triton.jit(do_not_specialize=["M", "k_iters"])
    def _gemv_kernel(
        x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, k_iters, stride_xm, stride_wn, stride_om,
        QUANTIZED: tl.constexpr, W_FP8: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
        ACT: tl.constexpr, GATED: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
        PDL: tl.constexpr,
    ):
        pdl_wait(PDL)  # the successor launches after the main loop (kernels/pdl.py says why)
        rm, rn, rk, m_mask, n_mask, pid_k = program_tiles(M, N, BLOCK_M, BLOCK_N, BLOCK_K)
        x_rows = x_ptr + rm.to(tl.int64)[:, None, None] * stride_xm  # [BLOCK_M, 1, 1]
        w_rows = w_ptr + rn.to(tl.int64)[None, :, None] * stride_wn  # [1, BLOCK_N, 1]
        # One float32 product sum per (row, output, k lane): plain FMAs in the loop, a single
        # cross-thread reduction over K after it.
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
        k_start = pid_k * (k_iters * BLOCK_K)
        # An explicit num_stages: without it Triton does not pipeline loads that feed no tl.dot.
        for i in tl.range(0, k_iters, num_stages=NUM_STAGES):
            kk = (k_start + i * BLOCK_K + rk)[None, None, :]
            k_mask = kk < K
            x = activation_tile(x_rows + kk, m_mask[:, None, None] & k_mask, K, ACT, GATED).to(tl.float32)
            w = tl.load(w_rows + kk, mask=n_mask[None, :, None] & k_mask, other=0)
            acc += x * weight_tile(w, QUANTIZED, W_FP8, tl.float32)
        pdl_launch_dependents(PDL)
        store_tile(tl.sum(acc, axis=2), rm, rn, m_mask, n_mask, pid_k, scale_ptr, bias_ptr, out_ptr, stride_om,
                   QUANTIZED, HAS_BIAS, ATOMIC)


def run_config(cfg: KernelConfig, x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
               bias: torch.Tensor | None, input_act: str | None = None) -> torch.Tensor:
    """x2 [m, K] (unit stride along K; [m, 2 * K] = [gate | up] for a gated input_act) -> [m, N]
    in x2.dtype by `cfg`'s path: input_act(x2) @ W.T (+ bias); scale None: a 16-bit weight in
    x2's dtype."""
    m = x2.shape[0]
    n, k = weight.shape
    if input_act is not None and not cfg.fuse_act and cfg.kernel in ("dot", "gemv", "mma"):
        x2, input_act = act_kernel(x2, input_act), None  # the prologue's float32 code: the same bits
    act, gated = split_input_act(input_act)
    assert x2.shape[1] == (2 * k if gated else k)
    if cfg.kernel == "cublas":
        return F.linear(apply_input_act(x2, input_act), weight, bias)
    if cfg.kernel == "dequant":
        return F.linear(apply_input_act(x2, input_act), dequantize_fast(weight, scale, x2.dtype), bias)
    if cfg.kernel == "mma":
        return int8_mma(x2, weight, scale, bias, cfg.block_n // 16, cfg.num_warps, cfg.num_stages,
                        cfg.block_k // K_BLOCK)
    atomic = cfg.split_k > 1
    # Split K: float32 partials are summed in place, then rounded once to the output dtype.
    out = torch.zeros((m, n), dtype=torch.float32, device=x2.device) if atomic else x2.new_empty((m, n))
    if m:
        quantized = scale is not None
        scale_arg = scale if quantized else weight  # not read without QUANTIZED
        w_arg = weight.view(torch.int8) if quantized else weight
        args = (x2, w_arg, scale_arg, bias if bias is not None else scale_arg, out, m, n, k)
        strides = (x2.stride(0), weight.stride(0), out.stride(0))
        meta = dict(QUANTIZED=quantized, W_FP8=weight.dtype == torch.float8_e4m3fn, HAS_BIAS=bias is not None,
                    ACT=act, GATED=gated, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                    NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(x2))
        k_iters = -(-k // (cfg.block_k * cfg.split_k))  # K tiles per split (the last may be short)
        grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), cfg.split_k)
        kernel, variant = (_gemv_kernel, {}) if cfg.kernel == "gemv" else (_gemm_kernel, {"SWAP_AB": cfg.swap_ab})
        kernel[grid](*args, k_iters, *strides, ATOMIC=atomic, **variant, **meta)
    return out.to(x2.dtype) if atomic else out


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> [m, K] with unit stride along K (what the kernels index)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()
