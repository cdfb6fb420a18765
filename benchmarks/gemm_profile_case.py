"""One decode GEMM config called over and over, for Nsight Compute to profile a call: what holds
the 8-bit dot kernel at 2.6-3.3 TB/s where the 16-bit swapped tile reads 3.6-4.2 (issue 7)?

    ncu --clock-control none -k regex:_gemm_kernel --launch-skip 8 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats ... \\
        python3 benchmarks/gemm_profile_case.py ROWS N K int8|fp8|bf16 BLOCK_N BLOCK_K SPLIT \\
        [swap|gemv|mma] [warps=W] [stages=S]

(`-k regex:_gemv_kernel` for the GEMV, which runs one row per program's BLOCK_M; `-k
regex:int8_mma` for the CUDA int8 kernel, kernels/int8_mma.py: BLOCK_N 16 x tiles, BLOCK_K 64 or
128, SPLIT 1, stages = K blocks in flight a warp.)

Four copies of the weight rotate, so every call reads its weight from HBM, as in decode. For the
stall reasons, which the sections above only summarise, add
`--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from gpu_single import weight_copies  # noqa: E402

from shardserve.kernels.gemm_kernels import KernelConfig, run_config  # noqa: E402
from shardserve.kernels.tuned_gemm import _dot_rows  # noqa: E402

if __name__ == "__main__":
    rows, n, k, fmt, block_n, block_k, split = sys.argv[1:8]
    rows, n, k, block_n, block_k, split = map(int, (rows, n, k, block_n, block_k, split))
    opts = dict(a.split("=") for a in sys.argv[8:] if "=" in a)
    block_m, stages = _dot_rows(rows)
    kind = next((a for a in ("gemv", "mma") if a in sys.argv[8:]), "dot")
    if kind == "gemv":
        block_m = 1 << max(0, rows - 1).bit_length()
    elif kind == "mma":
        block_m, stages = 8, 1
    cfg = KernelConfig(block_m, block_n, block_k, split, int(opts.get("warps", 4)), int(opts.get("stages", stages)),
                       kernel=kind, swap_ab="swap" in sys.argv[8:], fuse_act=kind != "mma")
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    wdtype = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}.get(fmt, torch.bfloat16)
    weights = weight_copies(n, k, torch.bfloat16, wdtype)
    for i in range(16):
        weight, scale = weights[i % 4]
        run_config(cfg, x, weight, scale, None)
    torch.cuda.synchronize()
    print(f"{cfg}: {rows} x {n} x {k} {fmt}: 16 calls done")
