"""One decode GEMM config called over and over, for Nsight Compute to profile a call: what holds
the 8-bit dot kernel at 2.6-3.3 TB/s where the 16-bit swapped tile reads 3.6-4.2 (issue 7)?

    ncu --clock-control none -k regex:_gemm_kernel --launch-skip 8 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats ... \\
        python3 benchmarks/gemm_profile_case.py ROWS N K int8|fp8|bf16 BLOCK_N BLOCK_K SPLIT [swap]

Four copies of the weight rotate, so every call reads its weight from HBM, as in decode. For the
stall reasons, which the sections above only summarise, add
`--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio`."""

from __future__ import annotations

import sys

import torch

from shardserve.kernels.gemm_kernels import KernelConfig, run_config
from shardserve.kernels.tuned_gemm import _dot_rows
from shardserve.kernels.weight_formats import quantize_rows

if __name__ == "__main__":
    rows, n, k, fmt, block_n, block_k, split = sys.argv[1:8]
    rows, n, k, block_n, block_k, split = map(int, (rows, n, k, block_n, block_k, split))
    block_m, stages = _dot_rows(rows)
    cfg = KernelConfig(block_m, block_n, block_k, split, num_stages=stages, swap_ab="swap" in sys.argv[8:])
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    qdtype = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}.get(fmt)
    weights = []
    for _ in range(4):
        w = torch.randn(n, k, device="cuda")
        weights.append((w.bfloat16(), None) if qdtype is None else quantize_rows(w, qdtype))
        del w
    for i in range(16):
        weight, scale = weights[i % 4]
        run_config(cfg, x, weight, scale, None)
    torch.cuda.synchronize()
    print(f"{cfg}: {rows} x {n} x {k} {fmt}: 16 calls done")
