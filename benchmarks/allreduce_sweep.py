"""All-reduce latency on the GPUs of one host, per size and dtype: NCCL vs our one-shot kernel
(parallel/one_shot_kernel.py; also with its second barrier in place of the split one) vs torch's
one-shot op (bfloat16 only: it has no float16), replayed from CUDA graphs (as in decode) and
eager. Then the all-reduce fused with the residual add and LayerNorm (reduce_norm_kernel.py) at
BLOOM-176B's and OPT-30B's decode rows, in CUDA graphs. Also run by gpu_tp4.py.
Usage on the device: PYTHONPATH=src python3 benchmarks/allreduce_sweep.py [world]"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Decode sizes, then prefill's (OPT-30B's 4 x 32 tokens: 1792 KB), where the one-shot kernel
# competes with NCCL's bandwidth algorithms.
SIZES_KB = [8, 32, 56, 128, 256, 512, 1024, 1792, 4096]
CALLS = 20  # per graph: launch gaps vanish, as in a decode step's graph


def _time_graph(fn, x) -> float:
    fn(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(7):
        dist.barrier()
        torch.cuda.synchronize()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / CALLS)
    return sorted(samples)[len(samples) // 2]


def _time_eager(fn, x) -> float:
    for _ in range(5):
        fn(x)
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        fn(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / 50


def _worker(rank: int, world: int, port: int, out_path: str) -> None:
    from shardserve.parallel import one_shot_kernel
    from shardserve.parallel.fast_all_reduce import SymmMemAllReduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    group = dist.group.WORLD
    # Ours (the split barrier, one_shot_kernel.py), and with the second barrier on a buffer of its
    # own. Back to back, as timed here, the split barrier's wait meets the peers' signals just
    # sent; in decode the matmuls in between hide that.
    fast = SymmMemAllReduce(group, torch.device("cuda", rank), max_bytes=max(SIZES_KB) * 1024)
    two = SymmMemAllReduce(group, torch.device("cuda", rank), max_bytes=max(SIZES_KB) * 1024, split_barrier=False)
    name = group.group_name

    def nccl(x):
        dist.all_reduce(x)
        return x

    def torch_one_shot(x):
        staged = fast.buffer.view(x.dtype)[: x.numel()]
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(staged, x.view(-1), "sum", name, out.view(-1))
        return out

    def ours_with_chunk(chunk_bytes):  # the kernel's work per program and iteration, varied
        def run(x):
            one_shot_kernel.CHUNK_BYTES, default = chunk_bytes, one_shot_kernel.CHUNK_BYTES
            try:
                return fast(x)
            finally:
                one_shot_kernel.CHUNK_BYTES = default
        return run

    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        methods = [("nccl", nccl), ("ours", fast), ("ours_two_barriers", two),
                   ("ours_chunk4k", ours_with_chunk(4096)), ("ours_chunk8k", ours_with_chunk(8192))]
        if dtype == torch.bfloat16:
            methods.append(("torch_one_shot", torch_one_shot))
        for kb in SIZES_KB:
            x = torch.randn(kb * 512, device="cuda", dtype=dtype)  # kb KB of 16-bit values
            row = {"KB": kb, "dtype": str(dtype).removeprefix("torch.")}
            for label, fn in methods:
                try:
                    row[f"{label}_graph_us"] = round(_time_graph(fn, x), 2)
                    row[f"{label}_eager_us"] = round(_time_eager(fn, x), 2)
                except Exception as e:  # report, keep going
                    row[f"{label}_error"] = repr(e)[:200]
            rows.append(row)
    rows += _add_norm_rows(fast)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(rows, f, indent=1)
    dist.destroy_process_group()


def _add_norm_rows(fast) -> list[dict]:
    """us per fused all-reduce + residual add + LayerNorm call at 4 decode rows, in graphs."""
    from shardserve.layers.norm import LayerNorm

    rows = []
    for label, dim, dtype in (("bloom-176b", 14336, torch.bfloat16), ("opt-30b", 7168, torch.float16)):
        norm = LayerNorm(dim, 1e-5)
        norm.weight = torch.nn.Parameter((1 + 0.3 * torch.randn(dim, device="cuda")).to(dtype), False)
        norm.bias = torch.nn.Parameter(torch.randn(dim, device="cuda").to(dtype), False)
        x = torch.randn(4, dim, device="cuda", dtype=dtype)
        residual = torch.randn(4, dim, device="cuda", dtype=dtype)
        time_us = _time_graph(lambda x, r=residual, n=norm: fast.add_norm(x, r, n), x)
        rows.append({"add_norm": label, "rows": 4, "dim": dim, "graph_us": round(time_us, 2)})
    return rows


def sweep(world: int, out_path: str) -> list[dict]:
    from shardserve.engine.worker import free_port

    mp.spawn(_worker, args=(world, free_port(), out_path), nprocs=world)
    with open(out_path) as f:
        rows = json.load(f)
    for row in rows:
        print(row, flush=True)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    sweep(int(sys.argv[1]) if len(sys.argv) > 1 else torch.cuda.device_count(), "allreduce.json")
