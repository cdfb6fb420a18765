"""Symmetric-memory one-shot all-reduce vs NCCL sums on random inputs (needs >= 2 GPUs), every
dtype and sizes that are not whole chunks, eagerly and replayed from a CUDA graph; every rank
gets the same bits; NCCL stays for tensors it does not take."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shardserve.engine.worker import free_port

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")

SIZES = [1, 7, 1000, 4 * 7168, 64 * 1024 + 3]  # elements, up to 128 KB in half precision


_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _excess(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor) -> float:
    """Largest |got - want| as a fraction of the rounding bound two correct sums may differ by
    (<= 1 passes). A wrong sum (a rank's share missing or counted twice) is far above 1."""
    from shardserve.parallel.fast_all_reduce import sum_error_bound

    return float(((got.float() - want.float()).abs() / sum_error_bound(x, dist.group.WORLD)).max())


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    from shardserve.parallel.fast_all_reduce import create_fast_all_reduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    fast = create_fast_all_reduce(dist.group.WORLD, device, world)
    errors = {name: [] for name in _NAMES.values()}  # worst error vs NCCL / the bound, per dtype
    digests = []  # every rank's results, to check all ranks got the same bits
    assert fast is not None, "fast all-reduce not available"
    gen = torch.Generator(device=device).manual_seed(rank)
    for dtype in _NAMES:
        for n in SIZES:
            x = torch.randn(n, generator=gen, device=device).to(dtype)
            want = x.clone()
            dist.all_reduce(want)
            got = fast(x)
            errors[_NAMES[dtype]].append(_excess(got, want, x))
            digests.append(_digest(got))
    assert fast(torch.randn(4, 7168, device=device).to(torch.float16).t()) is None  # not contiguous
    # Inside a CUDA graph (float16, as OPT runs): capture once, replay on fresh data.
    static = torch.randn(4, 7168, generator=gen, device=device).to(torch.float16)
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
        errors["fp16"].append(_excess(out, want, static))
        digests.append(_digest(out))
    too_big = torch.randn(fast.max_bytes // 2 + 1, device=device).to(torch.bfloat16)
    declined = fast(too_big) is None
    results[rank] = ({name: max(errs) for name, errs in errors.items()}, declined, digests)
    dist.destroy_process_group()


def test_fast_all_reduce_matches_nccl():
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    world = min(torch.cuda.device_count(), 4)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), results), nprocs=world)
        results = dict(results)
    assert len({tuple(digests) for _, _, digests in results.values()}) == 1, "ranks got different sums"
    for rank, (err, declined, _) in results.items():
        for name, excess in err.items():
            assert excess <= 1.0, f"rank {rank}: {name} differs from NCCL by {excess:.2f}x the rounding bound"
        assert declined, "tensors over max_bytes must go to NCCL"
