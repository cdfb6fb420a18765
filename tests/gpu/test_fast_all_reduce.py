"""Symmetric-memory one-shot all-reduce vs NCCL sums on random inputs (needs >= 2 GPUs),
eagerly and replayed from a CUDA graph, and the NCCL fallback for tensors it does not take."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shardserve.engine.worker import free_port

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")

SIZES = [1, 8, 1000, 4 * 7168, 64 * 1024]  # elements, up to 128 KB in half precision


_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
# Sums of up to 4 normals: bf16 rounding of the result (an ulp near 8 is 2^-5); float32 sums
# differ from NCCL's only in summation order (an ulp near 8 is 2^-20).
_BOUNDS = {"bf16": 0.05, "fp32": 1e-4}


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    from shardserve.parallel.fast_all_reduce import create_fast_all_reduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    fast = create_fast_all_reduce(dist.group.WORLD, device, world)
    errors = {"bf16": [], "fp32": []}  # max abs error vs NCCL, per dtype
    assert fast is not None, "fast all-reduce not available"
    gen = torch.Generator(device=device).manual_seed(rank)
    for dtype in (torch.bfloat16, torch.float32):
        for n in SIZES:
            x = torch.randn(n, generator=gen, device=device).to(dtype)
            want = x.clone()
            dist.all_reduce(want)
            got = fast(x)
            if (n * x.element_size()) % 16:  # sizes the kernel cannot take go to NCCL
                assert got is None
                continue
            errors[_NAMES[dtype]].append(float((got.float() - want.float()).abs().max()))
    assert fast(torch.randn(4, 7168, device=device).half()) is None  # float16 stays on NCCL
    # Inside a CUDA graph: capture once, replay on fresh data.
    static = torch.randn(4, 7168, generator=gen, device=device).to(torch.bfloat16)
    fast(static)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fast(static)
    for _ in range(3):
        static.copy_(torch.randn(4, 7168, generator=gen, device=device).to(torch.bfloat16))
        want = static.clone()
        dist.all_reduce(want)
        graph.replay()
        torch.cuda.synchronize()
        errors["bf16"].append(float((out.float() - want.float()).abs().max()))
    too_big = torch.randn(fast.max_bytes // 2 + 1, device=device).to(torch.bfloat16)
    declined = fast(too_big) is None
    results[rank] = ({name: max(errs) for name, errs in errors.items()}, declined)
    dist.destroy_process_group()


def test_fast_all_reduce_matches_nccl():
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    world = min(torch.cuda.device_count(), 4)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), results), nprocs=world)
        results = dict(results)
    for rank, (err, declined) in results.items():
        for name, bound in _BOUNDS.items():
            assert err[name] < bound, f"rank {rank}: {name} max abs error {err[name]} vs NCCL"
        assert declined, "tensors over max_bytes must go to NCCL"
