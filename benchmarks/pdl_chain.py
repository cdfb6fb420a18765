"""What programmatic dependent launch (kernels/pdl.py) does to the decode GEMMs. One GPU,
CUDA-graph replay of 16 (window, GEMM) pairs on four rotating weights: the window is a one-program
kernel that spins for W us (standing in for an all-reduce's barrier waits or attention's small
kernels), launched like the engine's kernels. Per variant (PDL off / on) and window (0: GEMMs
back to back, 10 us): us per pair, and a window-only chain; the Triton GEMMs and the CUDA int8
kernel (kernels/int8_mma.py). (Commit fa552c9 also had the GEMMs' trigger at their start as a
variant: benchmarks/RESULTS.md.) Run on the device:
PYTHONPATH=src python3 benchmarks/pdl_chain.py [--mma-only]"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from gpu_single import graph_time_us, weight_copies  # noqa: E402

from shardserve.kernels import pdl  # noqa: E402
from shardserve.kernels.gemm_kernels import KernelConfig, run_config  # noqa: E402
from shardserve.kernels.pdl import pdl_args, pdl_entry  # noqa: E402
from shardserve.kernels.tuned_gemm import mma_config  # noqa: E402

CASES = {  # name: (rows, N, K, weight format, the tuner's config on an H200)
    "llama8b-gate_up-bf16-1row": (1, 28672, 4096, torch.bfloat16, KernelConfig(16, 64, 128, 1, swap_ab=True)),
    "llama8b-gate_up-int8-1row": (1, 28672, 4096, torch.int8, KernelConfig(1, 32, 256, 1, kernel="gemv")),
    "opt30b-tp4-qkv-fp16-4rows": (4, 5376, 7168, torch.float16, KernelConfig(16, 64, 256, 1, swap_ab=True)),
    "opt30b-tp4-fc1-fp16-4rows": (4, 7168, 7168, torch.float16, KernelConfig(16, 64, 256, 1, swap_ab=True)),
    "bloom-tp4-fc1-int8-4rows": (4, 14336, 14336, torch.int8, KernelConfig(16, 64, 256, 1)),
}
MMA_CASES = {  # the CUDA int8 kernel with the variant the tuner picked on an H200 (RESULTS.md)
    "bloom-tp4-fc1-int8-4rows-mma": (4, 14336, 14336, torch.int8, mma_config(2, 8, 1)),
    "bloom-tp4-qkv-int8-4rows-mma": (4, 10752, 14336, torch.int8, mma_config(2, 8, 1)),
    "bloom-tp4-dense-int8-4rows-mma": (4, 14336, 3584, torch.int8, mma_config(2, 8, 1)),
    "llama8b-o-int8-4rows-mma": (4, 4096, 4096, torch.int8, mma_config(1, 16, 1)),
}
VARIANTS = {"off": False, "on": True}


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


def case(rows, n, k, wdtype, cfg) -> dict:
    dtype = torch.bfloat16 if wdtype == torch.int8 else wdtype
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    weights = weight_copies(n, k, dtype, wdtype)
    turn = itertools.count()

    def pair(window: float) -> None:
        if window:
            spin(x, window)
        run_config(cfg, x, *weights[next(turn) % 4], None)

    out = {}
    for name, on in VARIANTS.items():
        pdl.set_pdl(on)
        for window in (0, 10):
            out[f"{name} window {window}"] = graph_time_us(lambda w=window: pair(w), calls=16)
        out[f"{name} window only"] = graph_time_us(lambda: spin(x, 10), calls=16)
    pdl.set_pdl(False)
    return out


if __name__ == "__main__":
    cases = MMA_CASES if "--mma-only" in sys.argv else CASES | MMA_CASES
    results = {name: case(*spec) for name, spec in cases.items()}
    for name, res in results.items():
        print(name)
        for key, us in res.items():
            print(f"  {key:20s} {us:8.2f} us per pair")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "pdl_chain.json"), "w") as f:
            json.dump(results, f, indent=1)
