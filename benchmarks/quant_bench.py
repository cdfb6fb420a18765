"""Issue 7 on the device machine: 8-bit kernels, Llama-3-8B-shaped decode in bf16 / int8 / fp8,
BLOOM-176B INT8 at TP4, and OPT-30B pre-sharded loading against transformers. Each part fits
one 10-minute command; every figure lands in $OUT/results.json (benchmarks/stages.py).

    PYTHONPATH=src python3 benchmarks/quant_bench.py --part kernels     # 1 GPU: tests + kernel times
    PYTHONPATH=src python3 benchmarks/quant_bench.py --part llama8b     # 1 GPU: decode, batch 1
    PYTHONPATH=src python3 benchmarks/quant_bench.py --part bloom176b   # --tp GPUs (4), batch 4 x 256
    PYTHONPATH=src python3 benchmarks/quant_bench.py --part load        # 4 GPUs, ~130 GB of disk (presharded_load.py)

`--part load` writes its checkpoints under --workdir and reuses them: if the first command runs
out of time while writing them, run the same command again on the same (warm) machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import OUT, finish, run_pytest, stage  # noqa: E402

DEADLINE = 570
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
# Llama-3-8B's linear layers at TP1: (output features, input features).
LLAMA8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


# -- kernels --------------------------------------------------------------------------------------
def kernel_times(sweep: bool = False) -> dict:
    """Per Llama-3-8B linear and batch M in (1, 4, 16, 64, 512): microseconds per call under CUDA-
    graph replay (as decode runs) for cuBLAS bf16, for bf16 through the tuned path the unquantised
    layers take at M <= 64 (its choice: "cublas" or a Triton config), and for int8 / fp8 weights the
    way the layers run them: tuned_linear with the config its tuner chose (logged with the tuner's
    own timings and how long tuning took, Triton compiles included), fp8 at 512 rows through
    torch._scaled_mm; at 512 rows also the dot kernel at prefill tiles (the alternative to
    dequantise + cuBLAS). Also the LM head (128256 x 4096), quantised with the layers.
    Weight GB/s counts the weight bytes each reads once. *_us come from triton's do_bench_cudagraph,
    which reads a weight smaller than L2 (o_proj's 32 MB in bf16) partly from L2; *_hbm_us use the
    tuner's own timer (calls rotate over weight copies >= 2x L2, as a decode step streams every
    layer's weights): those are the figures to hold against the copy bandwidth.
    sweep: at batch 1, every tuner candidate instead."""
    import functools
    import logging

    import torch.nn.functional as F
    from triton.testing import do_bench_cudagraph

    from shardserve.kernels import tuned_gemm
    from shardserve.kernels.fp8_gemm import fp8_scaled_mm, scaled_mm_applies
    from shardserve.kernels.gemm_kernels import CUBLAS, KernelConfig
    from shardserve.kernels.tuned_gemm import (
        DECODE_MAX_TOKENS,
        candidates,
        chosen_config,
        tuned_linear,
    )
    from shardserve.kernels.weight_formats import quantize_rows

    def us(fn, *args, **kw) -> float:
        return 1e3 * do_bench_cudagraph(functools.partial(fn, *args, **kw), rep=100, return_mode="median")

    def hbm_us(x, w, config=None) -> float:  # fn(weight=copy) per call, copies rotating past L2
        return tuned_gemm._graph_time_us(functools.partial(tuned_linear, x, config=config), w)

    tuner_log: list[str] = []  # the tuner's debug lines: every candidate's time as it measured it
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: tuner_log.append(record.getMessage())
    tuner = logging.getLogger(tuned_gemm.__name__)
    tuner.addHandler(handler)
    level = tuner.level
    tuner.setLevel(logging.DEBUG)
    prefill_tiles = KernelConfig(128, 128, 64, 1, num_warps=8, num_stages=3)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = LLAMA8B | {"lm_head": (128256, 4096)}
    rows = []
    try:
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            packed = {q: quantize_rows(w, dt) for q, dt in QDTYPES.items()}
            for m in (1,) if sweep else (1, 4, 16, 64, 512):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                row = {"linear": name, "m": m, "bf16_us": us(F.linear, x, w)}
                row["bf16_weight_GBps"] = 2 * n * k / row["bf16_us"] / 1e3
                if m <= DECODE_MAX_TOKENS:  # the unquantised layers' decode path (tuned here)
                    t0 = time.perf_counter()
                    row["bf16_tuned_config"] = str(chosen_config(x, w))
                    row["bf16_tuned_tune_s"] = round(time.perf_counter() - t0, 2)
                    row["bf16_tuned_us"] = us(tuned_linear, x, w)
                    row["bf16_tuned_speedup"] = row["bf16_us"] / row["bf16_tuned_us"]
                    row["bf16_hbm_us"] = hbm_us(x, w, config=CUBLAS)
                    row["bf16_tuned_hbm_us"] = hbm_us(x, w)
                    for key in ("bf16_hbm", "bf16_tuned_hbm"):
                        row[f"{key}_weight_GBps"] = 2 * n * k / row[f"{key}_us"] / 1e3
                    if sweep:
                        cands = candidates(m, n, k, sms, torch.bfloat16)
                        row["bf16_candidates_us"] = {str(c): us(tuned_linear, x, w, config=c) for c in cands}
                        row["bf16_candidates_hbm_us"] = {str(c): hbm_us(x, w, config=c) for c in cands}
                for q, (qw, s) in packed.items():
                    if q == "fp8" and scaled_mm_applies(x, qw):  # W8A8 prefill, as Fp8WeightOnly runs it
                        row["fp8_path"], fn = "torch._scaled_mm", fp8_scaled_mm
                    else:  # tune (once per row class and shape) before do_bench captures it
                        t0 = time.perf_counter()
                        row[f"{q}_config"] = str(chosen_config(x, qw, s))
                        row[f"{q}_tune_s"] = round(time.perf_counter() - t0, 2)
                        fn = tuned_linear
                    row[f"{q}_us"] = us(fn, x, qw, s)
                    row[f"{q}_speedup"] = row["bf16_us"] / row[f"{q}_us"]
                    row[f"{q}_weight_GBps"] = n * k / row[f"{q}_us"] / 1e3
                    if q == "int8" and m > DECODE_MAX_TOKENS:
                        row["int8_prefill_tiles_us"] = us(tuned_linear, x, qw, s, config=prefill_tiles)
                    if sweep:
                        row[f"{q}_candidates_us"] = {str(c): us(tuned_linear, x, qw, s, config=c)
                                                     for c in candidates(m, n, k, sms)}
                print(row, flush=True)
                rows.append(row)
            del w, packed
    finally:
        tuner.removeHandler(handler)
        tuner.setLevel(level)
    return {"rows": rows, "tuner_log": tuner_log}


# -- end to end latency ---------------------------------------------------------------------------
def _bench(model: str, tp: int, batch: int, reps: int, check_tokens: int, variants: dict,
           profile: bool = False) -> dict:
    """run_bench for our engine's variants (bandwidth utilisation counts the bytes each variant
    really reads: 8-bit linear weights + scales, model-dtype rest); profile: one more batch of
    each under the profiler, into $OUT/profile/<variant>/."""
    from shardserve.bench.latency import BenchConfig, run_bench

    cfg = BenchConfig(model=model, random_weights=True, tp=tp, batch=batch, prompt_len=32, new_tokens=256,
                      reps=reps, engines=("tp",), dtype="bf16", check_tokens=check_tokens, out_dir=OUT / model,
                      variants=variants, profile_dir=OUT / "profile" if profile else None)
    results, context = run_bench(cfg)
    return {"copy_GBps": context["copy_bandwidth_GBps"], "correctness": context.get("correctness"),
            "variants": {r.engine: r.summary() | {"load_s": r.load_s, "warmup_s": r.warmup_s} for r in results}}


def llama8b(ablations: bool, profile: bool = False, batch: int = 1, no_mma: bool = False) -> dict:
    formats = {"bf16": {}, "int8": {"quantization": "int8"}, "fp8": {"quantization": "fp8"}}
    variants = dict(formats)
    if no_mma:  # the tuner without the CUDA int8 kernel (a candidate at 1-8 rows)
        variants["int8-no-mma"] = {"quantization": "int8", "extra": {"int8_mma": False}}
    if ablations:  # each format without programmatic dependent launch (kernels/pdl.py); bf16 with
        # asynchronous scheduling off, and with the small fused kernels off
        variants |= {f"{name}-no-pdl": spec | {"extra": {"pdl": False}} for name, spec in formats.items()}
        variants |= {"bf16-sync": {"async_scheduling": False}, "bf16-unfused": {"extra": {"fused_kernels": False}}}
    out = _bench("llama-3-8b", tp=1, batch=batch, reps=3, check_tokens=16, variants=variants, profile=profile)
    step = {k: v["decode_ms_per_step"] for k, v in out["variants"].items()}
    out["decode_speedup_vs_bf16"] = {q: step["bf16"] / step[q] for q in ("int8", "fp8")}
    print("decode speed-up vs bf16 (target >= 1.6):", out["decode_speedup_vs_bf16"], flush=True)
    return out


def bloom176b(tp: int, two_barriers: bool = False, no_mma: bool = False, profile: bool = False,
              eager_prefill: bool = False) -> dict:
    variants = {"int8": {"quantization": "int8"}}
    if eager_prefill:  # every prefill step eager, not replayed from CUDA graphs (engine/prefill_graphs.py)
        variants["int8-eager-prefill"] = {"quantization": "int8", "extra": {"prefill_graphs": False}}
    if two_barriers:  # the all-reduce kernels' second barrier in place of the split one
        variants["int8-two-barriers"] = {"quantization": "int8", "extra": {"all_reduce_split_barrier": False}}
    if no_mma:  # the tuner without the CUDA int8 kernel (kernels/int8_mma.py): Triton's alone
        variants["int8-no-mma"] = {"quantization": "int8", "extra": {"int8_mma": False}}
    out = _bench("bloom", tp=tp, batch=4, reps=5, check_tokens=0, variants=variants, profile=profile)
    print(f"BLOOM-176B int8 TP{tp} P50 ms (target <= 3500 on 4xH200 TP4):", out["variants"]["int8"]["p50_ms"], flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", required=True, choices=["kernels", "llama8b", "bloom176b", "load"])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "quant-bench")
    parser.add_argument("--model", default="opt-30b", help="--part load: catalog model to write and load")
    parser.add_argument("--tp", type=int, default=4, help="--part load and bloom176b: ranks (GPUs)")
    parser.add_argument("--skip-tests", action="store_true", help="--part kernels: no GPU tests first")
    parser.add_argument("--skip-sweep", action="store_true", help="--part kernels: no batch-1 sweep")
    parser.add_argument("--ablations", action="store_true", help="--part llama8b: also each format without PDL, bf16 sync and unfused")
    parser.add_argument("--profile", action="store_true",
                        help="--part llama8b / bloom176b: each variant's kernels under the profiler ($OUT/profile)")
    parser.add_argument("--two-barriers", action="store_true",
                        help="--part bloom176b: also int8 with the all-reduce kernels' second barrier")
    parser.add_argument("--no-mma", action="store_true",
                        help="--part bloom176b / llama8b: also int8 without the CUDA int8 kernel (Triton's alone)")
    parser.add_argument("--eager-prefill", action="store_true",
                        help="--part bloom176b: also int8 with every prefill step run eagerly (no prefill graphs)")
    parser.add_argument("--warm", action="store_true",
                        help="--part load: then also both loads from the page cache (the disk out of the way)")
    parser.add_argument("--no-cold", action="store_true",
                        help="--part load: skip the cold-cache loads (with --warm: the page-cache loads alone)")
    parser.add_argument("--batch", type=int, default=1, help="--part llama8b: sequences (target: batch 1)")
    args = parser.parse_args()
    if args.part == "kernels":
        stage("gpu_name", lambda: torch.cuda.get_device_name(0), 0, DEADLINE)
        if not args.skip_tests:
            stage("gpu_tests", lambda: run_pytest(["tests/gpu/test_quant_kernels.py", "tests/gpu/test_dense_kernels.py",
                                                         "tests/gpu/test_act_gemm_kernels.py"], 600), 120, DEADLINE)
        stage("kernel_times", kernel_times, 60, DEADLINE)
        if not args.skip_sweep:
            stage("kernel_sweep_batch1", lambda: kernel_times(sweep=True), 90, DEADLINE)
    elif args.part == "load":
        from presharded_load import load

        load(args.workdir, args.model, args.tp, DEADLINE, args.warm, cold=not args.no_cold)
    elif args.part == "bloom176b":
        stage(f"bloom176b_tp{args.tp}", lambda: bloom176b(args.tp, args.two_barriers, args.no_mma, args.profile,
                                                                args.eager_prefill), 60, DEADLINE)
    else:
        stage("llama8b", lambda: llama8b(args.ablations, args.profile, args.batch, args.no_mma), 60, DEADLINE)
    finish()
