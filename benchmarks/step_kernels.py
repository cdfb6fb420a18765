"""Where a decode step's time goes, from a profiler trace (LLM.start_profile's rank{r}.trace.json,
e.g. `quant_bench.py --part llama8b --profile`). Kernels overlap under programmatic dependent
launch (a kernel's recorded duration includes its wait for the predecessor), so each kernel is
charged its *increment*: its end minus the latest end before it, in start order. Increments sum to
the GPU's busy-and-idle span, and the idle time between kernels falls to the kernel after it.
Kernels are grouped by (name, grid): the same GEMM kernel at another layer shape has its own grid.
    python3 benchmarks/step_kernels.py TRACE [TRACE ...] [--steps N]"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def kernels(trace_path: str) -> list[dict]:
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    return sorted((e for e in events if e.get("cat") == "kernel" and "dur" in e), key=lambda e: e["ts"])


def increments(events: list[dict]) -> dict:
    """(name, grid) -> {"count", "increment_us" total, "dur_us" total, "idle_us" total, "idles": per
    call}."""
    rows: dict = defaultdict(lambda: {"count": 0, "increment_us": 0.0, "dur_us": 0.0, "idle_us": 0.0, "idles": []})
    last_end = None
    for e in events:
        end = e["ts"] + e["dur"]
        key = (e["name"][:60], str(e.get("args", {}).get("grid", "")))
        row = rows[key]
        row["count"] += 1
        row["dur_us"] += e["dur"]
        start = e["ts"] if last_end is None else last_end  # the first kernel: its whole duration
        row["increment_us"] += max(0.0, end - start)
        row["idle_us"] += max(0.0, e["ts"] - start)
        row["idles"].append(max(0.0, e["ts"] - start))
        last_end = end if last_end is None else max(last_end, end)
    return rows


def report(trace_path: str, steps: int) -> dict:
    rows = increments(kernels(trace_path))
    total = sum(r["increment_us"] for r in rows.values())
    print(f"{trace_path}: {total / 1e3:.2f} ms of kernel span; per step (/ {steps}):")
    # idle: before the kernel, per step; its median per call tells a steady gap from rare long ones.
    print(f"{'us/step':>8} {'idle':>6} {'idle p50':>8} {'calls/step':>10} {'us/call dur':>11}  kernel [grid]")
    top = sorted(rows.items(), key=lambda kv: -kv[1]["increment_us"])
    for (name, grid), r in top[:25]:
        print(f"{r['increment_us'] / steps:8.1f} {r['idle_us'] / steps:6.1f} {statistics.median(r['idles']):8.1f} "
              f"{r['count'] / steps:10.1f} "
              f"{r['dur_us'] / r['count']:11.2f}  {name} {grid}")
    return {"span_ms": total / 1e3, "per_step_us": {f"{n} {g}": round(r["increment_us"] / steps, 2) for (n, g), r in top}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--steps", type=int, default=256, help="decode steps in the profiled batch")
    args = parser.parse_args()
    for path in args.traces:
        report(path, args.steps)
