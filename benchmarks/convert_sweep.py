"""Does a cheaper int8 -> float conversion make the 8-bit decode GEMMs faster? (One GPU.)

Stripped-down copies of the GEMV loop (1 row, float32 FMAs) and of the dot loop (4 rows, tensor
cores) of kernels/gemm_kernels.py, each with several conversions of the weight tile, checked
against dequantise-then-matmul in float32 and timed as the tuner times (CUDA-graph replay,
weights rotating past L2) on Llama-3-8B, BLOOM-176B TP4 and OPT-30B TP4 shapes:

  GEMV  0  Triton's form: sign-extending byte extract, integer add into 2^23's mantissa, subtract
        1  inline PTX: xor 0x80 per byte, one PRMT per weight under 2^23's exponent, subtract
           (kernels/weight_convert.py's own `_int8_to_f32_ptx`, which ships)
        2  subnormal: xor 0x80, PRMT under exponent 0, so the float is (w + 128) * 2^-149 with
           no subtraction; x scaled by 2^64, and 128 * sum(x) taken off at the end
  dot   0  Triton's cast to the activation dtype
        2  subnormal bf16 / fp16 ((w + 128) * 2^-133 / 2^-24: xor and two PRMTs per four
           weights), x scaled by 2^40 in bf16, the same correction
        3  bf16 activations: the MMA in fp16 (x converted, weights by the 0x6400 magic: xor,
           PRMT, HSUB2)

    PYTHONPATH=src python3 benchmarks/convert_sweep.py   # -> $OUT/convert_sweep.json
"""

from __future__ import annotations

import functools
import json
import os

import torch
import triton
import triton.language as tl

from shardserve.kernels.tuned_gemm import _graph_time_us
from shardserve.kernels.weight_convert import _int8_to_f32_ptx
from shardserve.kernels.weight_formats import dequantize, quantize_rows


@triton.jit
def _f32_subnormal(w):  # (w + 128) * 2^-149
    return tl.inline_asm_elementwise(
        asm="""{ .reg .b32 t; xor.b32 t, $4, 0x80808080;
        prmt.b32 $0, t, 0, 0x4440; prmt.b32 $1, t, 0, 0x4441;
        prmt.b32 $2, t, 0, 0x4442; prmt.b32 $3, t, 0, 0x4443; }""",
        constraints="=r,=r,=r,=r,r", args=[w], dtype=tl.float32, is_pure=True, pack=4)


_HALF_SUBNORMAL = tl.constexpr("""{ .reg .b32 t; xor.b32 t, $2, 0x80808080;
        prmt.b32 $0, t, 0, 0x4140; prmt.b32 $1, t, 0, 0x4342; }""")


@triton.jit
def _bf16_subnormal(w):  # (w + 128) * 2^-133
    return tl.inline_asm_elementwise(asm=_HALF_SUBNORMAL, constraints="=r,=r,r", args=[w],
                                     dtype=tl.bfloat16, is_pure=True, pack=4)


@triton.jit
def _f16_subnormal(w):  # (w + 128) * 2^-24
    return tl.inline_asm_elementwise(asm=_HALF_SUBNORMAL, constraints="=r,=r,r", args=[w],
                                     dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def _f16_magic(w):  # w exactly, as fp16
    return tl.inline_asm_elementwise(
        asm="""{ .reg .b32 t, m; xor.b32 t, $2, 0x80808080; mov.b32 m, 0x64806480;
        prmt.b32 $0, t, 0x64646464, 0x4140; prmt.b32 $1, t, 0x64646464, 0x4342;
        sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; }""",
        constraints="=r,=r,r", args=[w], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def _gemv(x_ptr, w_ptr, s_ptr, o_ptr, N, K, k_iters, MODE: tl.constexpr, BN: tl.constexpr,
          BK: tl.constexpr, STAGES: tl.constexpr, ATOMIC: tl.constexpr):
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    x_sum = tl.zeros((BK,), dtype=tl.float32)
    k0 = tl.program_id(2) * k_iters * BK
    for i in tl.range(0, k_iters, num_stages=STAGES):
        kk = k0 + i * BK + rk
        km = kk < K
        x = tl.load(x_ptr + kk, mask=km, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * K + kk[None, :],
                    mask=(rn < N)[:, None] & km[None, :], other=0)
        if MODE == 0:
            acc += x[None, :] * ((w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0)
        elif MODE == 1:
            acc += x[None, :] * _int8_to_f32_ptx(w)
        else:
            x_sum += x
            acc += (x * 18446744073709551616.0)[None, :] * _f32_subnormal(w)  # x * 2^64
    r = tl.sum(acc, axis=1)
    if MODE == 2:
        r = r * 38685626227668133590597632.0 - 128.0 * tl.sum(x_sum)  # * 2^(149 - 64)
    r = r * tl.load(s_ptr + rn, mask=rn < N, other=0.0)
    if ATOMIC:
        tl.atomic_add(o_ptr + rn, r, mask=rn < N)
    else:
        tl.store(o_ptr + rn, r.to(o_ptr.dtype.element_ty), mask=rn < N)


@triton.jit
def _dot(x_ptr, w_ptr, s_ptr, o_ptr, M, N, K, k_iters, MODE: tl.constexpr, BN: tl.constexpr,
         BK: tl.constexpr, STAGES: tl.constexpr, ATOMIC: tl.constexpr):
    dtype = x_ptr.dtype.element_ty
    rm = tl.arange(0, 16)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((16, BN), dtype=tl.float32)
    x_sum = tl.zeros((16, BK), dtype=tl.float32)
    k0 = tl.program_id(2) * k_iters * BK
    for i in tl.range(0, k_iters, num_stages=STAGES):
        kk = k0 + i * BK + rk
        km = kk < K
        x = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm < M)[:, None] & km[None, :], other=0.0)
        w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * K + kk[None, :],
                    mask=(rn < N)[:, None] & km[None, :], other=0)
        if MODE == 0:
            acc = tl.dot(x, tl.trans(w.to(dtype)), acc)
        elif MODE == 2:
            x_sum += x.to(tl.float32)
            if dtype == tl.bfloat16:
                acc = tl.dot((x * 1099511627776.0).to(dtype), tl.trans(_bf16_subnormal(w)), acc)  # x * 2^40
            else:
                acc = tl.dot(x, tl.trans(_f16_subnormal(w)), acc)
        else:
            acc = tl.dot(x.to(tl.float16), tl.trans(_f16_magic(w)), acc)
    if MODE == 2:
        unit = 633825300114114700748351602688.0 if dtype == tl.bfloat16 else 16777216.0  # 2^93, 2^24
        acc = acc * unit - 128.0 * tl.sum(x_sum, axis=1)[:, None]
    acc = acc * tl.load(s_ptr + rn, mask=rn < N, other=0.0)[None, :]
    out = o_ptr + rm[:, None] * N + rn[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=mask)


def run(kernel, mode, x, q, s, bn, bk, split, warps):
    (m, k), n = x.shape, q.shape[0]
    k_iters = -(-k // (bk * split))
    out = torch.zeros((m, n), dtype=torch.float32, device=x.device) if split > 1 else x.new_empty((m, n))
    shape = (n, k) if kernel is _gemv else (m, n, k)
    kernel[(1, triton.cdiv(n, bn), split)](x, q, s, out, *shape, k_iters, MODE=mode, BN=bn, BK=bk, STAGES=4,
                                            ATOMIC=split > 1, num_warps=warps, num_stages=4)
    return out.to(x.dtype)


# (kernel, rows, case, N, K, activation dtype, [(BLOCK_N, BLOCK_K, K split)])
CASES = [
    (_gemv, 1, "llama qkv", 6144, 4096, torch.bfloat16, [(16, 512, 1), (32, 256, 1), (16, 512, 2)]),
    (_gemv, 1, "llama gate_up", 28672, 4096, torch.bfloat16, [(16, 512, 1), (32, 256, 1)]),
    (_gemv, 1, "llama down", 4096, 14336, torch.bfloat16, [(16, 512, 2), (32, 256, 2), (16, 512, 4)]),
    (_gemv, 1, "llama o", 4096, 4096, torch.bfloat16, [(16, 512, 1), (16, 512, 2)]),
    (_dot, 4, "bloom qkv", 10752, 14336, torch.bfloat16, [(64, 256, 2), (64, 128, 2), (32, 256, 2)]),
    (_dot, 4, "bloom fc1", 14336, 14336, torch.bfloat16, [(64, 256, 1), (64, 128, 2), (32, 256, 1)]),
    (_dot, 4, "bloom fc2", 14336, 14336, torch.bfloat16, [(64, 256, 1), (64, 128, 2)]),
    (_dot, 4, "bloom dense", 14336, 3584, torch.bfloat16, [(64, 256, 1), (32, 256, 1), (64, 128, 2)]),
    (_dot, 4, "llama down", 4096, 14336, torch.bfloat16, [(64, 128, 8), (64, 256, 4)]),
    (_dot, 4, "opt fc1 (int8, fp16)", 7168, 7168, torch.float16, [(64, 256, 1), (32, 256, 1)]),
]


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for kernel, m, name, n, k, dtype, tiles in CASES:
        q, s = quantize_rows(torch.randn(n, k, device="cuda") * 0.02, torch.int8)
        x = (torch.randn(m, k, device="cuda") + 0.3).to(dtype)  # a mean: the correction's worst case
        ref = x.float() @ dequantize(q, s, torch.float32).T
        modes = (0, 1, 2) if kernel is _gemv else (0, 2, 3) if dtype == torch.bfloat16 else (0, 2)
        for bn, bk, split in tiles:
            for warps in (4,) if kernel is _gemv else (4, 8):
                row = {"case": name, "tile": f"{bn}x{bk} split {split} warps {warps}"}
                for mode in modes:
                    y = run(kernel, mode, x, q, s, bn, bk, split, warps).float()
                    err = ((y - ref).abs().max() / ref.abs().max()).item()
                    call = functools.partial(run, kernel, mode, x, s=s, bn=bn, bk=bk, split=split, warps=warps)
                    us = _graph_time_us(lambda weight, call=call: call(q=weight), q)
                    row[f"mode {mode}"] = {"us": round(us, 2), "max_rel_err": float(f"{err:.1e}")}
                print(row, flush=True)
                rows.append(row)
    with open(os.path.join(os.environ.get("OUT", "."), "convert_sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
