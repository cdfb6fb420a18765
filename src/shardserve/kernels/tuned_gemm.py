"""Decode-sized matmuls by a stored weight, y = x @ W.T (+ b), with tiles tuned per layer shape.

The weight formats, the Triton kernels and the four paths a `KernelConfig` names (dot, gemv,
cublas, dequant) live in kernels/gemm_kernels.py; this module chooses among them per call.

Tiles: at decode sizes on a CUDA device, the first eager call per (row class, N, K, dtypes,
device, input activation) times the `candidates` on the real inputs under CUDA-graph replay, as
decode runs, and caches the fastest (`_TUNED`); a kernel must beat cuBLAS by CUBLAS_MARGIN to
replace it. With an input activation every candidate is timed with it: fused into a kernel's
prologue, or as its own kernel before the same kernel (`fuse_act=False`) or before cuBLAS, so
the choice weighs what fusing saves against what it recomputes. The engine runs every decode
batch bucket eagerly before capturing its graph, so tuning happens then; during a capture, on
the CPU and with tuning off (SHARDSERVE_GEMM_TUNE=0, or `TUNE = False`) `pick_config` decides:
cuBLAS for 16-bit weights, for 8-bit ones a heuristic fitted to an H200 sweep (activation
fused). Triton compiles each config once per process (and caches it on disk); M and the K
split are runtime values (Triton specialises N, K and the strides only on divisibility by 16),
so one compile serves every layer shape.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from shardserve.kernels import _has_triton, int8_mma
from shardserve.kernels.act_and_mul import input_act_reference
from shardserve.kernels.gemm_kernels import (
    CUBLAS,
    DEQUANT,
    KernelConfig,
    as_rows,
    device_facts,
    run_config,
)
from shardserve.kernels.weight_formats import QMAX, dequantize

if _has_triton:
    from triton.runtime.errors import OutOfResources, PTXASError

logger = logging.getLogger(__name__)

# Largest batch treated as decode (weight-bound; tuned); larger ones are prefill (compute-bound).
DECODE_MAX_TOKENS = 64
# The GEMV kernel is offered to the tuner up to this many rows. Past 2 its per-row FMAs and
# conversions (sm_90 SASS, int8: ~4.6 instructions per weight at 1 row, ~7.5 at 2, against ~4-5
# for the dot kernel at any row count) make it slower than reading the weights.
GEMV_MAX_TOKENS = 2
TUNE = os.environ.get("SHARDSERVE_GEMM_TUNE", "1") != "0"
# A kernel replaces cuBLAS for a shape only if the tuner timed it below this fraction of cuBLAS's
# time: each candidate is timed alone, and a near tie is not worth trading the library for.
CUBLAS_MARGIN = 0.98


def _pow2(v: int) -> int:
    return 1 << max(0, v - 1).bit_length()


def _fill_split(n_tiles: int, k: int, block_k: int, num_sms: int, most: int) -> int:
    """Smallest power-of-two K split (<= most) giving >= 2 programs per SM, each split keeping
    >= 2 K tiles (fewer would make the memset and the atomics cost more than they spread)."""
    k_tiles, split = -(-k // block_k), 1
    while n_tiles * split < 2 * num_sms and 2 * split * 2 <= k_tiles and split < most:
        split *= 2
    return split


def _dot_rows(m: int) -> tuple[int, int]:
    """(BLOCK_M, num_stages) of the dot kernel for m rows: 16 rows at least (tl.dot's minimum)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    return block_m, 3 if block_m == 64 else 4


def pick_config(m: int, n: int, k: int, num_sms: int, weight_dtype: torch.dtype = torch.int8) -> KernelConfig:
    """The untuned choice for an [m, k] x [k, n] product. 16-bit weights: cuBLAS, at any size.
    8-bit weights: the dequantise + cuBLAS path past DECODE_MAX_TOKENS rows, else the dot kernel
    with tiles fitted to an H200 sweep at M=1 (Llama-3-8B shapes, block_k 256): 32-wide tiles
    without a split won where they already make two waves (gate_up 28672x4096) or where the weight
    is small (o_proj 4096x4096: the split's memset and cast launches cost more than the extra
    programs gain); elsewhere 64-wide tiles split K up to 4 ways (qkv 6144x4096, down 4096x14336)."""
    if weight_dtype not in QMAX:
        return CUBLAS
    if m > DECODE_MAX_TOKENS:
        return DEQUANT
    block_m, stages = _dot_rows(m)
    block_k = min(256, max(32, _pow2(k)))
    m_tiles = -(-m // block_m)
    if -(-n // 32) * m_tiles >= 2 * num_sms or n * k < 20 * 2**20:
        return KernelConfig(block_m, 32, block_k, 1, num_stages=stages)
    split = _fill_split(-(-n // 64) * m_tiles, k, block_k, num_sms, most=4)
    return KernelConfig(block_m, 64, block_k, split, num_stages=stages)


# The dot tiles `candidates` offers: (BLOCK_N, BLOCK_K, swapped) by (8-bit weight, at most 16 rows).
_DOT_TILES = {
    (True, True): [(32, 256, False), (64, 128, False), (128, 128, False), (32, 512, False)],
    (True, False): [(32, 256, False), (64, 256, False)],
    (False, True): [(64, 256, True), (32, 256, True), (64, 128, True)],
    (False, False): [(32, 256, False), (64, 128, False)],
}
# The int8 "mma" kernel's (16-feature tiles, warps splitting K, K blocks in flight a warp, K block
# width / 64): with 64-wide blocks those fastest at some Llama-3-8B or BLOOM-176B TP4 shape, 1 or 4
# rows, among all 27 on an H200 (benchmarks/gemm_sweep.py --mma-only), and (2, 16, 1), fastest at
# BLOOM fc1 on an H100; with 128-wide blocks those fastest or within 1.5% at some shape at 4 rows
# among all 54 on an H100 (3-9% below the 64-wide ones at BLOOM's shapes), and (2, 8, 1, 2),
# fastest at BLOOM TP4's qkv at 4 rows on an H200 (44.6 us against 46.7 for the next).
_MMA_TILES = [(1, 16, 1, 1), (2, 8, 1, 1), (2, 4, 1, 1), (2, 16, 1, 1), (1, 16, 2, 1),
              (1, 4, 1, 2), (1, 8, 1, 2), (1, 16, 1, 2), (2, 8, 1, 2)]


def candidates(m: int, n: int, k: int, num_sms: int, weight_dtype: torch.dtype = torch.int8,
               input_act: str | None = None) -> list[KernelConfig]:
    """What the tuner times for m <= DECODE_MAX_TOKENS rows, the untuned choice (`pick_config`)
    first, then the dot kernel's (BLOCK_N, BLOCK_K) tiles, each unsplit and with the K split that
    fills the GPU (up to 8 ways below 17 rows, else 4; the same config where N alone fills it),
    and for m <= GEMV_MAX_TOKENS the GEMV with 16x512 and 32x256 tiles likewise (num_warps so each
    thread keeps 64 float32 accumulators: 4 for one row, 8 for two). With an input activation,
    every kernel config also with the activation apart (`fuse_act=False`: act_kernel, then the
    plain kernel), so fusing must win its place too: twice the counts below, less cuBLAS. The
    tiles are those that came within 1.3% of the best of a wider grid (tiles of 8-32 KB per
    stage, swapped or not, other warps and stages: benchmarks/gemm_sweep.py) on an H200, for
    Llama-3-8B (1 and 4 rows, bf16 / int8 / fp8), OPT-30B at TP4 (fp16) and BLOOM-176B at TP4
    (int8), 4 rows:
      8-bit weights: below 17 rows dot 32x256, 64x128, 128x128 and 32x512 (swapping never won
        for them); past 16 rows, which the sweep did not measure, 32x256 and 64x256 as before.
        At most 13 configs; for int8 at 1-8 rows with K a multiple of 64, where this PyTorch
        can compile CUDA C (NVRTC), also the 5 "mma" configs of kernels/int8_mma.py with 64-wide
        K blocks, and where K is a multiple of 128, 4 with 128-wide ones (`_MMA_TILES`).
      16-bit weights: cuBLAS, then below 17 rows the swapped dot (weights on the MMA's tall side,
        `_gemm_kernel`) at 64x256, 32x256 and 64x128, which beat cuBLAS and the unswapped tiles
        by 2-9% at 4 rows; past 16 rows the unswapped 32x256 and 64x128. At most 11 configs.
    A compile is one (tile, split or not, swapped or not, dtypes, bias or not, input activation)
    and serves every layer shape (`test_16bit_candidates_start_with_cublas_and_fit_the_budget`
    counts them for a bf16 Llama); an activation is a compile of its own."""
    out = [pick_config(m, n, k, num_sms, weight_dtype)]
    block_m, stages = _dot_rows(m)
    m_tiles = -(-m // block_m)
    most = 8 if block_m == 16 else 4  # the sweep measured up to 16 rows
    for bn, bk, swap in _DOT_TILES[weight_dtype in QMAX, block_m == 16]:
        bk = min(bk, max(32, _pow2(k)))
        for split in (1, _fill_split(-(-n // bn) * m_tiles, k, bk, num_sms, most)):
            out.append(KernelConfig(block_m, bn, bk, split, num_stages=stages, swap_ab=swap))
    if m <= GEMV_MAX_TOKENS:
        bm = _pow2(m)
        for bn, bk in ((16, 512), (32, 256)):
            bk = min(bk, max(32, _pow2(k)))
            warps = max(4, bm * bn * bk // (32 * 64))
            for split in (1, _fill_split(-(-n // bn), k, bk, num_sms, most=4)):
                out.append(KernelConfig(bm, bn, bk, split, warps, 4, kernel="gemv"))
    out = list(dict.fromkeys(out))  # duplicates removed, order kept
    if input_act is not None:
        out += [replace(c, fuse_act=False) for c in out if c.kernel in ("dot", "gemv")]
    out += [mma_config(nt, warps, pipe, kw) for nt, warps, pipe, kw in _MMA_TILES
            if int8_mma.shape_applies(m, k, weight_dtype, kw)]
    return out


def mma_config(tiles: int, warps: int, in_flight: int, kw: int = 1) -> KernelConfig:
    """The int8 "mma" kernel (kernels/int8_mma.py) with `tiles` 16-feature tiles a program, `warps`
    warps splitting K in it, `in_flight` K blocks loading ahead a warp, and K blocks of 64 * kw. It
    has no prologue to fuse an input activation into: always `fuse_act=False`."""
    return KernelConfig(int8_mma.MAX_ROWS, 16 * tiles, int8_mma.K_BLOCK * kw, 1, warps, in_flight, kernel="mma",
                        fuse_act=False)


def tuned_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    config: KernelConfig | None = None, input_act: str | None = None,
) -> torch.Tensor:
    """x [..., K] fp16/bf16, weight [N, K] with scale [N] float32 (8-bit) or in x's dtype with
    scale None (16-bit), bias [N] or None -> input_act(x) @ W.T (+ bias) [..., N] in x.dtype, by
    the tuned (or untuned) config; `config` overrides it (tests, sweeps). input_act
    (kernels/act_and_mul.py; x is [..., 2 * K] = [gate | up] for a gated one) is fused into the
    kernels. A choice of cuBLAS without one is the plain F.linear call: one cache look-up (~2 us
    of CPU in eager mode, nothing under a CUDA graph) on top of it."""
    cfg = config or chosen_config(x, weight, scale, bias, input_act)
    if cfg.kernel == "cublas" and input_act is None:
        return F.linear(x, weight, bias)
    assert weight.stride(1) == 1
    assert weight.dtype == x.dtype if scale is None else scale.dtype == torch.float32
    return run_config(cfg, as_rows(x), weight, scale, bias, input_act).reshape(*x.shape[:-1], weight.shape[0])


# -- tuning -------------------------------------------------------------------------------------
# (row class, N, K, weight dtype, x dtype, device, int8 "mma" kernel on, input_act) -> config
_TUNED: dict[tuple, KernelConfig] = {}


def _can_tune(x: torch.Tensor) -> bool:
    """Timing needs a GPU and must not run inside a CUDA graph capture (the heuristic serves then)."""
    return TUNE and x.is_cuda and not torch.cuda.is_current_stream_capturing()


def chosen_config(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, input_act: str | None = None) -> KernelConfig:
    """The config `tuned_linear` runs for x [..., K] (m rows) with `input_act`: tuned (once per
    key) where it can be, else `pick_config`. Batches round up to a power of two (the engine's
    buckets 1, 2, 4, 8, then every 8: 24 tunes as 32), so a model tunes at most 7 row classes per
    layer shape."""
    n, k = weight.shape
    m = x.numel() // max(x.shape[-1], 1)
    if 0 < m <= DECODE_MAX_TOKENS:
        key = (_pow2(m), n, k, weight.dtype, x.dtype, x.device, int8_mma.enabled(), input_act)
        cfg = _TUNED.get(key)
        if cfg is not None:
            return cfg
    num_sms = device_facts(x.device)[0]
    if m == 0 or m > DECODE_MAX_TOKENS or not _can_tune(x):
        return pick_config(m, n, k, num_sms, weight.dtype)
    started = time.perf_counter()
    try:
        configs = candidates(m, n, k, num_sms, weight.dtype, input_act)
        cfg, times = _tune(as_rows(x), weight, scale, bias, configs, _graph_time_us, input_act)
    except Exception:  # tuning only buys speed: never let it fail a forward pass
        logger.warning("tuned_linear %s: tuning failed, using the heuristic", key, exc_info=True)
        cfg, times = pick_config(m, n, k, num_sms, weight.dtype), {}
    _TUNED[key] = cfg
    logger.debug("tuned_linear %s: %s in %.2f s; us per call: %s", key, cfg, time.perf_counter() - started,
                 {str(c): round(t, 2) for c, t in times.items()})
    return cfg


def _tune(x2, weight, scale, bias, configs: list[KernelConfig], timer, input_act: str | None = None
          ) -> tuple[KernelConfig, dict]:
    """The fastest of `configs` by timer(fn, weight) -> us per fn(weight=w) call on x2 (input
    activation included), among those that compile and match the reference on random rows (not
    x2: a warm-up batch may hold padding rows that are not finite), over up to 256 outputs;
    cuBLAS, where it is a candidate, unless a kernel took under CUBLAS_MARGIN of its time.
    Outputs are discarded. Returns (config, {config: us})."""
    rows = min(weight.shape[0], 256)
    probe = torch.randn(x2.shape, generator=torch.Generator().manual_seed(0)).to(x2)
    w32 = weight[:rows].float() if scale is None else dequantize(weight[:rows], scale[:rows], torch.float32)
    ref = F.linear(input_act_reference(probe, input_act).float(), w32, None if bias is None else bias[:rows].float())
    times = {}
    for cfg in configs:
        try:
            out = run_config(cfg, probe, weight, scale, bias, input_act)  # compiles it
        except (OutOfResources, PTXASError, int8_mma.KernelUnavailable) as e:  # e.g. shared memory on a smaller GPU
            logger.debug("tuned_linear config %s does not compile here: %s", cfg, e)
            continue
        err = float((out[:, :rows].float() - ref).norm() / ref.norm().clamp_min(1e-30))
        if not err < 1e-2:  # bf16 output rounding is ~2e-3; this is a wrong kernel
            logger.warning("tuned_linear config %s is off by %.2e (relative) on this GPU: not used", cfg, err)
            continue
        times[cfg] = timer(functools.partial(run_config, cfg, x2, scale=scale, bias=bias, input_act=input_act), weight)
    if not times:
        return configs[0], times
    best = min(times, key=times.get)
    if CUBLAS in times and times[best] > CUBLAS_MARGIN * times[CUBLAS]:
        best = CUBLAS
    return best, times


@functools.lru_cache(maxsize=16)
def _tuning_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream every timing capture on `device` uses: cuBLAS keeps a workspace for
    each stream it has run on, so a fresh stream per tune would strand one per tune."""
    return torch.cuda.Stream(device)


def _graph_time_us(fn, weight: torch.Tensor, calls: int = 16, replays: int = 5) -> float:
    """Median us per fn(weight=w) call over `replays` replays of a CUDA graph of `calls` calls,
    as decode replays them: split-K memsets and casts (and cuBLAS's own reduce kernels) included,
    and no CPU launch gaps. The calls rotate over copies of the weight totalling >= 2x L2, so a
    small weight is read from HBM as in a decode step (which streams every layer's weights)
    rather than from L2."""
    copies = -(-2 * torch.cuda.get_device_properties(weight.device).L2_cache_size // weight.nbytes)
    weights = [weight]
    try:
        weights += [weight.clone() for _ in range(min(copies, 8) - 1)]
    except torch.cuda.OutOfMemoryError:  # then timed from L2, which still ranks most configs
        pass
    stream = _tuning_stream(weight.device)
    stream.wait_stream(torch.cuda.current_stream(weight.device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        fn(weight=weight)  # the allocator's first blocks (and cuBLAS's workspace) outside the capture
        graph.capture_begin(capture_error_mode="thread_local")
        for i in range(calls):
            fn(weight=weights[i % len(weights)])
        graph.capture_end()
    torch.cuda.current_stream(weight.device).wait_stream(stream)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()  # the first replay uploads the graph
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    graph.reset()
    return statistics.median(times)
