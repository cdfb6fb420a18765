"""The pieces the decode GEMM kernels of kernels/gemm_kernels.py are built from: a program's
tiles, its activation and weight tiles as the matmul takes them, the tensor-core loop over a
range of K tiles, and the epilogue that scales, adds the bias and stores (or atomically adds)
the result. Needs Triton."""

from __future__ import annotations

import triton
import triton.language as tl

from shardserve.kernels.act_and_mul import act_tile
from shardserve.kernels.weight_convert import dequant_tile


@triton.jit
def weight_tile(w, QUANTIZED: tl.constexpr, W_FP8: tl.constexpr, DTYPE: tl.constexpr):
    """A loaded weight tile -> DTYPE: 8-bit weights by `dequant_tile` (unscaled); a 16-bit
    weight is in the activation dtype already (no-op for the dot kernel, widened by the GEMV)."""
    if QUANTIZED:
        out = dequant_tile(w, W_FP8, DTYPE)
    else:
        out = w.to(DTYPE)
    return out


@triton.jit
def activation_tile(x_ptrs, mask, K, ACT: tl.constexpr, GATED: tl.constexpr):
    """The activation tile the matmul multiplies, in x's dtype: as stored (ACT ""), or act(x),
    or with GATED act(gate) * up, up being K columns after gate in each [gate | up] row.
    Masked entries load as 0, and every activation maps 0 to 0."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    if ACT != "":
        up = x
        if GATED:
            up = tl.load(x_ptrs + K, mask=mask, other=0.0)
        x = act_tile(x, up, ACT, GATED)
    return x


@triton.jit
def program_tiles(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's rows, outputs and K lanes, their masks, and its K split."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rm, rn, tl.arange(0, BLOCK_K), rm < M, rn < N, tl.program_id(2)


@triton.jit
def store_tile(acc, rm, rn, m_mask, n_mask, pid_k, scale_ptr, bias_ptr, out_ptr, stride_om,
               QUANTIZED: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] float32 -> out (+)= acc (* scale) (+ bias from the first K split,
    pid_k 0)."""
    if QUANTIZED:
        acc = acc * tl.load(scale_ptr + rn, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
    out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dot_k_tiles(x_rows, w_rows, rk, m_mask, n_mask, k_first, k_last, K,
                QUANTIZED: tl.constexpr, W_FP8: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr,
                SWAP_AB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                NUM_STAGES: tl.constexpr):
    """[BLOCK_M, BLOCK_N] float32 sum over K tiles [k_first, k_last) (past K: masked) of the
    activation tile times the weight tile, on tensor cores."""
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in tl.range(k_first, k_last, num_stages=NUM_STAGES):
        kk = i * BLOCK_K + rk
        k_mask = kk < K
        x = activation_tile(x_rows + kk[None, :], m_mask[:, None] & k_mask[None, :], K, ACT, GATED)
        # [BLOCK_N, BLOCK_K] weights in the activation dtype: 16-bit ones as loaded, 8-bit ones
        # converted exactly (fp8 comes as its int8 bits, so masked entries are +0 in either).
        w = tl.load(w_rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        w = weight_tile(w, QUANTIZED, W_FP8, x.dtype)
        if SWAP_AB:
            acc = tl.dot(w, tl.trans(x), acc)
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if SWAP_AB:
        acc = tl.trans(acc)
    return acc
