"""Does the decode GEMMs' weight prefetch (kernels/pdl.py) hide an idle window at all? One GPU,
CUDA-graph replay of 16 (window, GEMM) pairs on four rotating weights: the window is a one-program
kernel that spins for W us (standing in for an all-reduce's barrier waits), launched with
programmatic dependent launch like the engine's kernels. Per variant (PDL off; PDL on with a
prefetch budget of 0, 8, 16, 32 MiB) and window (0, 10 us): us per pair, and the GEMM's share
(pair minus a window-only chain). Then each budget once more under Nsight Compute, if asked
(--ncu: one GEMM call, DRAM bytes read). Run on the device:
PYTHONPATH=src python3 benchmarks/prefetch_chain.py"""

from __future__ import annotations

import json
import os
import sys

import torch
import triton
import triton.language as tl

from shardserve.kernels import pdl
from shardserve.kernels.gemm_kernels import KernelConfig, run_config
from shardserve.kernels.pdl import pdl_args, pdl_entry

CASES = {  # name: (rows, N, K, dtype, the tuner's config on an H200)
    "llama8b-gate_up-bf16-1row": (1, 28672, 4096, torch.bfloat16, KernelConfig(16, 64, 128, 1, swap_ab=True)),
    "opt30b-tp4-qkv-fp16-4rows": (4, 5376, 7168, torch.float16, KernelConfig(16, 64, 256, 1, swap_ab=True)),
}
BUDGETS_MB = [None, 0, 8, 16, 32]  # None: PDL off


@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _spin_kernel(ns, PDL: tl.constexpr):
    pdl_entry(PDL)
    start = _now()
    while _now() - start < ns:
        pass


def spin(x: torch.Tensor, us: float) -> None:
    _spin_kernel[(1,)](int(us * 1000), num_warps=1, **pdl_args(x))


def graph_us(fn, pairs: int = 16) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(10):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / 10 / pairs)
    return sorted(times)[len(times) // 2]


def case(rows, n, k, dtype, cfg) -> dict:
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) for _ in range(4)]
    out = {}
    for budget in BUDGETS_MB:
        pdl.set_pdl(budget is not None, weight_prefetch_bytes=(budget or 0) << 20)
        for window in (0, 10):
            def chain(window=window):
                for i in range(16):
                    if window:
                        spin(x, window)
                    run_config(cfg, x, weights[i % 4], None, None)

            out[f"budget {budget} window {window}"] = graph_us(chain)
        out[f"budget {budget} window only"] = graph_us(lambda: [spin(x, 10) for _ in range(16)])
    pdl.set_pdl(False)
    return out


if __name__ == "__main__":
    if "--ncu" in sys.argv:  # one call per budget: ncu -k regex:_gemm_kernel --metrics dram__bytes_read.sum
        rows, n, k, dtype, cfg = CASES[sys.argv[sys.argv.index("--ncu") + 1]]
        x = torch.randn(rows, k, device="cuda", dtype=dtype)
        w = torch.randn(n, k, device="cuda", dtype=dtype)
        for budget in BUDGETS_MB[1:]:
            pdl.set_pdl(True, weight_prefetch_bytes=budget << 20)
            torch.cuda.synchronize()
            run_config(cfg, x, w, None, None)
            torch.cuda.synchronize()
        sys.exit(0)
    results = {name: case(*spec) for name, spec in CASES.items()}
    for name, res in results.items():
        print(name)
        for key, us in res.items():
            print(f"  {key:28s} {us:8.2f} us per pair")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "prefetch_chain.json"), "w") as f:
            json.dump(results, f, indent=1)
