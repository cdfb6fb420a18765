"""Symmetric-memory one-shot all-reduce vs NCCL sums on random inputs (needs >= 2 GPUs), every
dtype and sizes that are not whole chunks, eagerly and replayed from a CUDA graph; every rank
gets the same bits; NCCL stays for tensors it does not take.

The all-reduce fused with the residual add and the norm (SymmMemAllReduce.add_norm, through
parallel.comm.all_reduce_add_norm as the models call it) vs the one-shot all-reduce followed by
the norm kernels it replaces: the same bits, on every rank, eagerly and from CUDA graphs.

Both with the kernels' two barriers and with the split barrier (one_shot_kernel.py)."""

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


def _worker(rank: int, world: int, port: int, results: dict, split: bool) -> None:
    from shardserve.parallel.fast_all_reduce import create_fast_all_reduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    fast = create_fast_all_reduce(dist.group.WORLD, device, world, split_barrier=split)
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


def _run_ranks(worker, split: bool) -> dict:
    """worker(rank, world, port, results, split) on one process per GPU (up to 4); results by
    rank. split: the kernels' split barrier (one_shot_kernel.py)."""
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    world = min(torch.cuda.device_count(), 4)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, free_port(), results, split), nprocs=world)
        return dict(results)


@pytest.mark.parametrize("split", [False, True], ids=["two-barriers", "split-barrier"])
def test_fast_all_reduce_matches_nccl(split):
    """Back-to-back calls reuse the buffer at once: with the split barrier, a rank that
    overwrote it before every peer had read it would show as a wrong sum."""
    results = _run_ranks(_worker, split)
    assert len({tuple(digests) for _, _, digests in results.values()}) == 1, "ranks got different sums"
    for rank, (err, declined, _) in results.items():
        for name, excess in err.items():
            assert excess <= 1.0, f"rank {rank}: {name} differs from NCCL by {excess:.2f}x the rounding bound"
        assert declined, "tensors over max_bytes must go to NCCL"


NORM_DIMS = [4096, 7168, 14336]  # Llama-3-8B, OPT-30B, BLOOM-176B (LayerNorm) / Llama-3-70B-ish
NORM_ROWS = [1, 4, 7]  # decode batch sizes; 7 rows of 14336 in half precision: 196 KB


def _two_step(fast, x, residual, norm):
    """What add_norm replaces: the one-shot all-reduce, then the norm's kernel."""
    from shardserve.kernels.layer_norm import fused_add_layer_norm, layer_norm
    from shardserve.kernels.rms_norm import fused_add_rms_norm, rms_norm

    s, bias = fast(x), getattr(norm, "bias", None)  # RMSNorm has no bias
    if residual is None:
        return (rms_norm(s, norm.weight, norm.eps) if bias is None else layer_norm(s, norm.weight, bias, norm.eps)), s
    if bias is None:
        return fused_add_rms_norm(s, residual, norm.weight, norm.eps)
    return fused_add_layer_norm(s, residual, norm.weight, bias, norm.eps)


def _random_norm(kind: str, dim: int, dtype: torch.dtype, gen: torch.Generator):
    from shardserve.layers.norm import LayerNorm, RMSNorm

    norm = LayerNorm(dim, 1e-5) if kind == "layer" else RMSNorm(dim, 1e-6)
    norm.weight = torch.nn.Parameter((1 + 0.3 * torch.randn(dim, generator=gen, device=gen.device)).to(dtype), False)
    if kind == "layer":
        norm.bias = torch.nn.Parameter(torch.randn(dim, generator=gen, device=gen.device).to(dtype), False)
    return norm


def _norm_worker(rank: int, world: int, port: int, results: dict, split: bool) -> None:
    from shardserve.parallel import ParallelInfo, set_parallel_info
    from shardserve.parallel.comm import all_reduce_add_norm
    from shardserve.parallel.fast_all_reduce import create_fast_all_reduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    fast = create_fast_all_reduce(dist.group.WORLD, device, world, split_barrier=split)
    assert fast is not None, "fast all-reduce not available"
    set_parallel_info(ParallelInfo(rank=rank, world_size=world, group=dist.group.WORLD, fast_all_reduce=fast))
    mine = torch.Generator(device=device).manual_seed(100 + rank)  # partial sums: every rank its own
    shared = torch.Generator(device=device).manual_seed(7)  # residual, norm parameters: replicated
    failures, digests, fused_calls = [], [], []
    fused = fast.add_norm

    def counted_add_norm(*args):  # to check that all_reduce_add_norm takes the fused kernel
        fused_calls.append(args[0].shape)
        return fused(*args)

    fast.add_norm = counted_add_norm

    def compare(what, got, want):
        if got is None:
            failures.append(f"{what}: declined")
            return
        for name, g, w in zip(("out", "residual"), got, want, strict=True):
            if not torch.equal(g, w):
                diff = (g.float() - w.float()).abs()
                failures.append(f"{what} {name}: {int((diff > 0).sum())}/{g.numel()} differ, max {float(diff.max()):.3g}")
            digests.append(_digest(g))

    def inputs(rows, dim, dtype):
        x = (2 * torch.randn(rows, dim, generator=mine, device=device)).to(dtype)
        residual = (4 * torch.randn(rows, dim, generator=shared, device=device) + 1).to(dtype)
        return x, residual

    # The split barrier: one case of each kernel pairing (its one-shot and norm kernels alternate
    # on one buffer below, mapping positions to programs differently), not every compile again.
    for kind in ("layer",) if split else ("layer", "rms"):
        for dtype in (torch.float16,) if split else (torch.float16, torch.bfloat16):
            for dim in [7168] if split else NORM_DIMS:
                norm = _random_norm(kind, dim, dtype, shared)
                for rows in NORM_ROWS:
                    what = f"{kind} {_NAMES[dtype]} [{rows}, {dim}]"
                    x, residual = inputs(rows, dim, dtype)
                    compare(what, fast.add_norm(x, residual, norm), _two_step(fast, x, residual, norm))
                    calls = len(fused_calls)
                    compare(what + " via comm", all_reduce_add_norm(x, residual, norm), _two_step(fast, x, residual, norm))
                    if len(fused_calls) != calls + 1:
                        failures.append(f"{what}: all_reduce_add_norm did not take the fused kernel")
                    if dim == 7168:  # (one width: every case is another kernel to compile)
                        compare(what + " no residual", fast.add_norm(x, None, norm), _two_step(fast, x, None, norm))
                    # Captured once, replayed on fresh inputs (the decode path runs in CUDA graphs).
                    static_x, static_residual = inputs(rows, dim, dtype)
                    torch.cuda.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        captured = all_reduce_add_norm(static_x, static_residual, norm)
                    for replay in range(2):
                        fresh_x, fresh_residual = inputs(rows, dim, dtype)
                        static_x.copy_(fresh_x)
                        static_residual.copy_(fresh_residual)
                        graph.replay()
                        compare(f"{what} graph replay {replay}", captured, _two_step(fast, fresh_x, fresh_residual, norm))
    norm = _random_norm("layer", 7168, torch.float16, shared)
    x, residual = inputs(4, 7168, torch.float16)
    too_big = torch.randn(fast.max_bytes // (2 * 7168) + 1, 7168, device=device).to(torch.float16)
    declined = {
        "x not contiguous": fast.add_norm(x.t().contiguous().t(), residual, norm),
        "residual not contiguous": fast.add_norm(x, residual.t().contiguous().t(), norm),
        "residual in another dtype": fast.add_norm(x, residual.float(), norm),
        "over max_bytes": fast.add_norm(too_big, None, norm),
    }
    fast.fuse_norm = False  # extra.fused_all_reduce_norm=false
    declined["fuse_norm off"] = fast.add_norm(x, residual, norm)
    results[rank] = (failures, digests, [name for name, got in declined.items() if got is not None])
    dist.destroy_process_group()


@pytest.mark.timeout(900)  # each rank compiles ~60 kernel variants
@pytest.mark.parametrize("split", [False, True], ids=["two-barriers", "split-barrier"])
def test_fused_all_reduce_add_norm_matches_two_kernels(split):
    results = _run_ranks(_norm_worker, split)
    for rank, (failures, _, taken) in sorted(results.items()):
        assert not failures, f"rank {rank}: fused != all-reduce then norm:\n" + "\n".join(failures[:20])
        assert not taken, f"rank {rank}: the fused kernel took inputs it must decline: {taken}"
    assert len({tuple(digests) for _, digests, _ in results.values()}) == 1, "ranks got different bits"
