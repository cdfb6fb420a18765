"""8-bit weights (kernels/weight_formats.py) to the activation dtype on the GPU, exactly: tile by
tile in registers (`dequant_tile`, how the decode GEMM kernels of kernels/gemm_kernels.py load
them) and a whole weight in one pass (`dequantize_fast`, the "dequant" path of prefill-sized
batches: the weight in the activation dtype, then one cuBLAS matmul). Needs Triton."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton's interpreter (the CPU tests) cannot run inline PTX: it takes the plain Triton forms.
_PTX = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on"))


@triton.jit
def _int8_to_f32_ptx(w):
    """Four int8 in one register -> four float32 in 2.25 instructions a weight, where Triton's
    form of the same trick (below) takes 3 (a sign-extending PRMT, an integer add, the
    subtraction): xor 0x80 makes each byte w + 128, one PRMT per weight puts it under float32
    2^23's exponent, and the float subtraction of 2^23 + 128 leaves w exactly. The 1-row GEMV
    loop goes from 5.4 to 4.6 instructions a weight (sm_90 SASS), and Llama-3-8B's four int8
    GEMVs from 67.9 to 66.8 us on an H200 (benchmarks/RESULTS.md)."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t;
        xor.b32 t, $4, 0x80808080;
        prmt.b32 $0, t, 0x4B000000, 0x7540;
        prmt.b32 $1, t, 0x4B000000, 0x7541;
        prmt.b32 $2, t, 0x4B000000, 0x7542;
        prmt.b32 $3, t, 0x4B000000, 0x7543;
        sub.f32 $0, $0, 0f4B000080;
        sub.f32 $1, $1, 0f4B000080;
        sub.f32 $2, $2, 0f4B000080;
        sub.f32 $3, $3, 0f4B000080;
        }""",
        constraints="=r,=r,=r,=r,r", args=[w], dtype=tl.float32, is_pure=True, pack=4)


@triton.jit
def dequant_tile(w, W_FP8: tl.constexpr, DTYPE: tl.constexpr):
    """A tile of 8-bit weights (int8 bits; fp8 comes as its bits) -> DTYPE, exactly. Where
    Triton's cast would use the quarter-rate conversion units (int8 -> fp32 / fp16 is I2F,
    fp8 -> bf16 goes through F2F: seen in sm_90 SASS), the cast is built from full-rate ops."""
    if W_FP8:
        f8 = w.to(tl.float8e4nv, bitcast=True)
        if DTYPE == tl.bfloat16:  # e4m3x2 -> f16x2, f16 -> f32 (HADD2), f32x2 -> bf16x2
            out = f8.to(tl.float32).to(DTYPE)
        else:
            out = f8.to(DTYPE)
    elif DTYPE == tl.float32 and _PTX:
        out = _int8_to_f32_ptx(w)
    elif DTYPE == tl.float32:
        # The float32 with bits 0x4B000000 + (w + 128) is 2^23 + w + 128: integer add, then
        # one exact float subtraction.
        out = (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    elif DTYPE == tl.float16:  # the same with fp16's 10 mantissa bits: 2^10 + w + 128
        out = (w.to(tl.int16) + 0x6480).to(tl.float16, bitcast=True) - 1152.0
    else:  # bf16: Triton's own cast is already such a bit trick
        out = w.to(DTYPE)
    return out


@triton.jit
def _dequant_kernel(w_ptr, scale_ptr, out_ptr, N, K, stride_wn, W_FP8: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # out [N, K] = (w * scale[:, None]) formed in float32 and rounded once: `dequantize`.
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rn < N)[:, None] & (rk < K)[None, :]
    w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + rk[None, :], mask=mask, other=0)
    s = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
    out = dequant_tile(w, W_FP8, tl.float32) * s[:, None]
    tl.store(out_ptr + rn.to(tl.int64)[:, None] * K + rk[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_fast(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize` in one Triton pass (bit-identical): no float32 [N, K] intermediates."""
    n, k = qweight.shape
    out = torch.empty((n, k), dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(n, 16), triton.cdiv(k, 256))
    _dequant_kernel[grid](qweight.view(torch.int8), scale, out, n, k, qweight.stride(0),
                          W_FP8=qweight.dtype == torch.float8_e4m3fn, BLOCK_N=16, BLOCK_K=256)
    return out
