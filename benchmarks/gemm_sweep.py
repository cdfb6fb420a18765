"""Decode GEMM sweep on one GPU: for the per-rank linear shapes of the benchmark models, the tuner's
candidates and a wider grid of dot tiles (swapped and not), each checked against the reference
and timed as the tuner times it (CUDA-graph replay, weights rotating past L2). It answers which
tiles the tuner should offer; the figures land in $OUT/results.json.

    PYTHONPATH=src python3 benchmarks/gemm_sweep.py [--rows 1 4] [--models llama-3-8b ...] [--weights int8 ...]
        [--tuner-only]   # the tuner's candidates alone, not the wider grid (minutes less)
        [--gemv-only]    # the tuner's candidates and the GEMV grid, no dot grid
        [--mma-only]     # the tuner's candidates and every int8 "mma" variant, no dot grid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import finish, stage  # noqa: E402

# Per-rank (output features, input features) and the weight dtypes each model is benchmarked in.
SHAPES = {
    "llama-3-8b": ({"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
                   ("bf16", "int8", "fp8")),
    "opt-30b-tp4": ({"qkv": (5376, 7168), "out": (7168, 1792), "fc1": (7168, 7168), "fc2": (7168, 7168)}, ("fp16",)),
    "bloom-176b-tp4": ({"qkv": (10752, 14336), "dense": (14336, 3584), "fc1": (14336, 14336),
                        "fc2": (14336, 14336)}, ("int8",)),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8, "fp8": torch.float8_e4m3fn}


def grid(m: int, n: int, k: int, sms: int, weight_dtype: torch.dtype, gemv_only: bool = False,
         mma_only: bool = False) -> list:
    """The tuner's candidates, then dot tiles of 8-32 KB of weights per stage, swapped and not,
    unsplit and with the filling K split, and warp / stage variants of the tile the tuner's sets
    are built around, swapped and not (more warps per program to hide the 8-bit conversions'
    latency, deeper or shallower load pipelines). Up to GEMV_MAX_TOKENS rows also GEMV tiles of
    8-16K weights, with 32 to 128 float32 accumulators a thread, 2 to 6 stages (gemv_only: the
    tuner's candidates and these alone)."""
    from shardserve.kernels.gemm_kernels import KernelConfig
    from shardserve.kernels.tuned_gemm import _dot_rows, _fill_split, candidates

    out = candidates(m, n, k, sms, weight_dtype)
    if gemv_only:
        return out + _gemv_grid(m, n, k, sms)
    if mma_only:
        return list(dict.fromkeys(out + _mma_grid(m, k, weight_dtype)))
    block_m, stages = _dot_rows(m)
    eight_bit = weight_dtype.itemsize == 1
    tiles = [(64, 128), (64, 256), (64, 512), (128, 128), (128, 256), (32, 512)]
    if not eight_bit:
        tiles = [(bn, bk // 2) for bn, bk in tiles]
    for bn, bk in tiles:
        for swap in (False, True):
            for split in (1, _fill_split(-(-n // bn), k, bk, sms, most=8)):
                out.append(KernelConfig(block_m, bn, bk, split, num_stages=stages, swap_ab=swap))
    bn, bk = (64, 128) if eight_bit else (64, 256)
    split = _fill_split(-(-n // bn), k, bk, sms, most=8)
    for warps, st in ((8, 4), (8, 6), (4, 3), (4, 6)):
        for swap in (False, True):
            out.append(KernelConfig(block_m, bn, bk, split, warps, st, swap_ab=swap))
    return list(dict.fromkeys(out + _gemv_grid(m, n, k, sms) + _mma_grid(m, k, weight_dtype)))


def _mma_grid(m: int, k: int, weight_dtype: torch.dtype) -> list:
    """Every variant of the int8 "mma" kernel (kernels/int8_mma.py) where it applies."""
    from shardserve.kernels import int8_mma
    from shardserve.kernels.tuned_gemm import mma_config

    return [mma_config(nt, warps, pipe, kw) for nt, warps, pipe, kw in int8_mma.VARIANTS
            if int8_mma.shape_applies(m, k, weight_dtype, kw)]


def _gemv_grid(m: int, n: int, k: int, sms: int) -> list:
    from shardserve.kernels.gemm_kernels import KernelConfig
    from shardserve.kernels.tuned_gemm import GEMV_MAX_TOKENS, _fill_split, _pow2

    out = []
    if m <= GEMV_MAX_TOKENS:
        bm = _pow2(m)
        for bn, bk in ((8, 1024), (16, 512), (32, 256), (16, 1024), (32, 512), (64, 256)):
            for acc_per_thread in (32, 64, 128):
                warps = bm * bn * bk // (32 * acc_per_thread)
                if not 2 <= warps <= 16:
                    continue
                for stages in (2, 4, 6):
                    for split in (1, _fill_split(-(-n // bn), k, bk, sms, most=4)):
                        out.append(KernelConfig(bm, bn, bk, split, warps, stages, kernel="gemv"))
    return out


def sweep(model: str, rows: list[int], weights: list[str] | None, tuner_only: bool = False,
          gemv_only: bool = False, mma_only: bool = False) -> list[dict]:
    from shardserve.kernels import tuned_gemm
    from shardserve.kernels.weight_formats import quantize_rows

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes, dtypes = SHAPES[model]
    act_dtype = torch.float16 if "fp16" in dtypes else torch.bfloat16
    results = []
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=act_dtype) * 0.02
        for dname in (d for d in dtypes if weights is None or d in weights):
            wdt = DTYPES[dname]
            weight, scale = (w, None) if wdt == act_dtype else quantize_rows(w, wdt)
            for m in rows:
                x = torch.randn(m, k, device="cuda", dtype=act_dtype)
                offered = tuned_gemm.candidates(m, n, k, sms, wdt)
                configs = offered if tuner_only else grid(m, n, k, sms, wdt, gemv_only, mma_only)
                tuner_set = set(offered)
                _, times = tuned_gemm._tune(x, weight, scale, None, configs, tuned_gemm._graph_time_us)
                ranked = sorted(times.items(), key=lambda kv: kv[1])
                tuner_best = min((t, str(c)) for c, t in times.items() if c in tuner_set)
                row = {"model": model, "linear": name, "n": n, "k": k, "weight": dname, "m": m,
                       "weight_MB": weight.nbytes / 1e6, "best": str(ranked[0][0]), "best_us": ranked[0][1],
                       "best_GBps": weight.nbytes / ranked[0][1] / 1e3, "tuner_best": tuner_best[1],
                       "tuner_best_us": tuner_best[0], "rejected": [str(c) for c in configs if c not in times],
                       "us": {str(c): round(t, 2) for c, t in ranked}}
                print({k_: v for k_, v in row.items() if k_ != "us"}, flush=True)
                print("   top 5:", [(str(c), round(t, 2)) for c, t in ranked[:5]], flush=True)
                results.append(row)
            del weight, scale
        del w
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--weights", nargs="+", choices=list(DTYPES), help="only these weight formats")
    parser.add_argument("--tuner-only", action="store_true", help="time the tuner's candidates alone")
    parser.add_argument("--gemv-only", action="store_true", help="the tuner's candidates and the GEMV grid")
    parser.add_argument("--mma-only", action="store_true", help="the tuner's candidates and every int8 mma variant")
    args = parser.parse_args()
    for model in args.models:
        stage(f"sweep_{model}", lambda model=model: sweep(model, args.rows, args.weights, args.tuner_only, args.gemv_only, args.mma_only), 30, 3600)
    finish()


if __name__ == "__main__":
    main()
