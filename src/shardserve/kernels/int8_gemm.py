"""8-bit weight x 16-bit activation matmul (int8 or fp8-e4m3 weights), dequantised in registers.

Format (layers/quant.py writes it): weight [N, K] int8 | float8_e4m3fn, row-major, and one
float32 scale per output row, W ~= weight * scale[:, None] (symmetric, per output channel).

Decode steps multiply a few rows of activations by every weight of the model, so their time is
the time to read the weights: the kernel reads each 8-bit weight byte once, converts the tile to
the activation dtype in registers, accumulates in float32 and applies the per-channel scale (and
the bias) to the accumulator, so it moves half the bytes of a bf16 matmul. Tiles are
[BLOCK_N output rows x BLOCK_K inputs], narrowed until every SM streams; where even 16-row tiles
leave SMs idle (small N), the K range is split over programs that atomically add float32
partials (one extra memset and cast, which is why splitting is the last resort).

`w8_linear_reference` (dequantise, then one ordinary matmul) is the definition the kernel is
tested against, the CPU path, and the GPU path for batches too large to be bandwidth-bound.
Triton is optional: without it only the reference and the format helpers are defined.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shardserve.kernels import _has_triton

if _has_triton:
    import triton
    import triton.language as tl

# Largest number of activation rows the fused kernel takes; larger batches are compute-bound.
DECODE_MAX_TOKENS = 64
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}  # largest magnitude of each format


def quantize_rows(w: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """w [rows, cols] float -> (q [rows, cols] qdtype, scale [rows] float32), w ~= q * scale.

    Symmetric per row: scale = max|row| / QMAX, so the largest entry maps to +-QMAX. int8 rounds
    to the nearest integer (error <= scale / 2); fp8 e4m3 rounds to 3 mantissa bits (error <=
    |w| / 16, or scale / 1024 below its normal range). An all-zero row gets q = 0.
    """
    if qdtype not in QMAX:
        raise ValueError(f"quantization dtype must be int8 or float8_e4m3fn, got {qdtype}")
    w32 = w.float()
    scale = (w32.abs().amax(dim=1) / QMAX[qdtype]).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = w32 / scale[:, None]  # [rows, cols] in [-QMAX, QMAX]
    if qdtype == torch.int8:
        return scaled.round_().clamp_(-127, 127).to(torch.int8), scale
    return scaled.clamp_(-448.0, 448.0).to(qdtype), scale  # the cast rounds to nearest even


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] 8-bit + [N] float32 -> [N, K] `dtype` (the product is formed in float32)."""
    return (qweight.float() * scale[:, None]).to(dtype)


def w8_linear_reference(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] -> [..., N] in x.dtype: the dequantised weight in x's dtype, one matmul."""
    return F.linear(x, dequantize(qweight, scale, x.dtype), bias)


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4


@functools.lru_cache(maxsize=16)
def _device_facts(device: torch.device) -> tuple[int, tuple[int, int]]:
    """(SM count, compute capability); the CPU (Triton's interpreter) answers as an H100."""
    if device.type != "cuda":
        return 132, (9, 0)
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count, (props.major, props.minor)


def kernel_applies(x: torch.Tensor, qweight: torch.Tensor) -> bool:
    """Whether `w8_linear` takes this call: a CUDA GPU, half-precision activations, a decode-
    sized batch, and for fp8 weights a GPU with fp8 conversions (compute capability >= 8.9)."""
    if not (_has_triton and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        return False
    if x.numel() > DECODE_MAX_TOKENS * x.shape[-1] or qweight.stride(-1) != 1:
        return False
    return qweight.dtype == torch.int8 or _device_facts(x.device)[1] >= (8, 9)


def pick_config(m: int, n: int, k: int, num_sms: int) -> KernelConfig:
    """Tiles for an [m, k] x [k, n] product at decode sizes. Output tiles are narrowed (down to
    16 rows of W) until there are >= 2 programs per SM; only if one wave is still not filled is
    K split (float32 partials added atomically, each split keeping >= 2 K tiles)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_k = min(256, max(32, 1 << (k - 1).bit_length()))  # next power of two, 32..256
    m_tiles = -(-m // block_m)
    block_n = 64
    while block_n > 16 and -(-n // block_n) * m_tiles < 2 * num_sms:
        block_n //= 2
    tiles, k_tiles = -(-n // block_n) * m_tiles, -(-k // block_k)
    split = 1
    while tiles * split < num_sms and 2 * split * 2 <= k_tiles and split < 16:
        split *= 2
    return KernelConfig(block_m, block_n, block_k, split, num_warps=4, num_stages=3 if block_m == 64 else 4)


if _has_triton:

    @triton.jit
    def _w8_gemm_kernel(
        x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
        K_ITERS: tl.constexpr, W_FP8: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # Program (n tile, k split, m tile) -> out[m tile, n tile] (+)= x[m, ks] @ W[n, ks].T * scale
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_mask, n_mask = rm < M, rn < N
        x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
        w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # This split's K range: K_ITERS tiles from k_start. A compile-time trip count (one variant
        # per layer shape) lets Triton pipeline the loads; the last split may run past K (masked).
        k_start = pid_k * (K_ITERS * BLOCK_K)
        for i in range(0, K_ITERS):
            kk = k_start + i * BLOCK_K + rk
            k_mask = kk < K
            x = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            # [BLOCK_N, BLOCK_K] bytes (fp8 weights come as their int8 bits, so that masked
            # entries are +0 in either format), converted exactly to the activation dtype.
            w = tl.load(w_rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
            if W_FP8:
                w = w.to(tl.float8e4nv, bitcast=True)
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        acc = acc * tl.load(scale_ptr + rn, mask=n_mask, other=0.0)[None, :]
        if HAS_BIAS:  # added by the first K split only
            bias = tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
            acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
        out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
        if ATOMIC:
            tl.atomic_add(out, acc, mask=mask)
        else:
            tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def w8_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """The Triton kernel: x [..., K] fp16/bf16, qweight [N, K], scale [N] float32, bias [N] or
    None -> [..., N] in x.dtype. `config` overrides the tile choice (benchmark sweeps)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], qweight.shape[0]
    assert qweight.shape[1] == k and qweight.stride(1) == 1 and scale.dtype == torch.float32
    cfg = config or pick_config(m, n, k, _device_facts(x.device)[0])
    atomic = cfg.split_k > 1
    # Split K: float32 partials are summed in place, then rounded once to the output dtype.
    out = torch.zeros((m, n), dtype=torch.float32, device=x.device) if atomic else x2.new_empty((m, n))
    if m:
        k_iters = -(-k // (cfg.block_k * cfg.split_k))  # K tiles per split (the last may be short)
        grid = (triton.cdiv(n, cfg.block_n), cfg.split_k, triton.cdiv(m, cfg.block_m))
        _w8_gemm_kernel[grid](
            x2, qweight.view(torch.int8), scale, bias if bias is not None else scale, out, m, n, k,
            x2.stride(0), qweight.stride(0), out.stride(0), K_ITERS=k_iters,
            W_FP8=qweight.dtype == torch.float8_e4m3fn, HAS_BIAS=bias is not None, ATOMIC=atomic,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if atomic:
        out = out.to(x.dtype)
    return out.reshape(*x.shape[:-1], n)
