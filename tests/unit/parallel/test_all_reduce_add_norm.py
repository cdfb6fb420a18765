"""all_reduce_add_norm: the fused all-reduce + residual add + norm and its fallbacks.

- Over gloo (CPU ranks) it is exactly all_reduce followed by the norm, on every rank.
- It hands the work to the fast all-reduce's fused kernel only where the norm would run its
  Triton kernel, and falls back to the two steps when the fast path declines.
- The fused kernel itself (parallel/reduce_norm_kernel.py) in Triton's interpreter, one process
  playing every rank in turn (the barriers need symmetric memory, so they are left out; each
  rank's own buffer starts as NaN, so its staging is checked too): the bits of the sum in rank
  order followed by the norm kernels. tests/gpu/test_fast_all_reduce.py checks it on real ranks.
"""

from __future__ import annotations

import pytest
import torch

from helpers.markers import needs_interpreter
from helpers.tp import run_tp
from shardserve.layers.norm import LayerNorm, RMSNorm
from shardserve.parallel import ParallelInfo, get_parallel_info, set_parallel_info
from shardserve.parallel.comm import all_reduce, all_reduce_add_norm

try:
    import triton
    import triton.language as tl
except ImportError:  # the interpreter tests skip
    triton = None

if triton is not None:

    @triton.jit
    def _no_barrier(signal_pads, slot, RANK: tl.constexpr, WORLD: tl.constexpr, TAKE_SEM: tl.constexpr):
        pass  # one process plays every rank, one after another: nothing to wait for

    @triton.jit
    def _no_done_signal(signal_pads, done_slot, RANK: tl.constexpr, WORLD: tl.constexpr):
        pass  # the split barrier's wait and signal: likewise nothing to do


def _norms(dim: int, dtype: torch.dtype) -> list[RMSNorm | LayerNorm]:
    gen = torch.Generator().manual_seed(7)  # the same parameters on every rank (replicated)
    rms, ln = RMSNorm(dim, 1e-6), LayerNorm(dim, 1e-5)
    for norm in (rms, ln):
        for p in norm.parameters():
            p.data = (1 + 0.3 * torch.randn(dim, generator=gen)).to(dtype)
    return [rms, ln]


def _gloo_rank(dtype: torch.dtype) -> list[torch.Tensor]:
    """On one gloo rank: the fused op's outputs, checked against all_reduce then the norm."""
    rank = get_parallel_info().rank
    partial = (torch.randn(5, 64, generator=torch.Generator().manual_seed(rank)) * 3).to(dtype)
    residual = (torch.randn(5, 64, generator=torch.Generator().manual_seed(99)) * 5 + 1).to(dtype)
    outputs = []
    for norm in _norms(64, dtype):
        for res in (residual, None):
            got = all_reduce_add_norm(partial.clone(), res, norm)  # the fallback reduces in place
            x = all_reduce(partial.clone())
            want = (norm(x), x) if res is None else norm(x, res)
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), (type(norm).__name__, res is None)
            outputs.extend(got)
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gloo_fallback_is_all_reduce_then_norm(dtype):
    per_rank = run_tp(2, _gloo_rank, dtype)
    assert all(torch.equal(a, b) for a, b in zip(*per_rank, strict=True)), "ranks disagree"


class _FakeFast:
    """Stands in for SymmMemAllReduce on 2 ranks holding the same x: sum = 2 * x."""

    def __init__(self, fused_result):
        self.fused_result, self.add_norm_calls = fused_result, 0

    def __call__(self, x):
        return 2 * x

    def add_norm(self, x, residual, norm):
        self.add_norm_calls += 1
        return self.fused_result


@pytest.fixture
def two_fake_ranks():
    previous = get_parallel_info()

    def install(fast):
        set_parallel_info(ParallelInfo(rank=0, world_size=2, fast_all_reduce=fast))
        return fast

    yield install
    set_parallel_info(previous)


def test_torch_norms_never_take_the_fused_kernel(two_fake_ranks):
    """CPU tensors (or fused kernels off): the norm runs in torch, so the fused kernel, which has
    the Triton norm's bits, is not asked; the result is all_reduce then the torch norm."""
    fast = two_fake_ranks(_FakeFast(fused_result="fused"))
    x, residual = torch.randn(3, 32), torch.randn(3, 32)
    for norm in _norms(32, torch.float32):
        out, res = all_reduce_add_norm(x, residual, norm)
        assert torch.equal(res, 2 * x + residual) and torch.equal(out, norm(2 * x + residual))
    assert fast.add_norm_calls == 0


@needs_interpreter
def test_fused_kernel_taken_where_the_norm_kernel_runs_else_two_steps(two_fake_ranks, monkeypatch):
    pytest.importorskip("triton")
    import shardserve.layers.norm as norm_module

    monkeypatch.setattr(norm_module, "use_fused_kernels", lambda x: True)  # CPU tensors through Triton
    x, residual = torch.randn(3, 32), torch.randn(3, 32)
    for norm in _norms(32, torch.float32):
        fast = two_fake_ranks(_FakeFast(fused_result="fused"))
        assert all_reduce_add_norm(x, residual, norm) == "fused" and fast.add_norm_calls == 1
        fast = two_fake_ranks(_FakeFast(fused_result=None))  # declined: reduce, then the norm kernel
        out, res = all_reduce_add_norm(x, residual, norm)
        assert fast.add_norm_calls == 1
        assert torch.equal(res, 2 * x + residual) and torch.equal(out, norm(2 * x + residual))


def _run_kernel_as_every_rank(partials, residual, norm, max_programs, split=False):
    """Each simulated rank's (out, residual out) from reduce_add_norm, ranks run one by one."""
    from shardserve.parallel.reduce_norm_kernel import reduce_add_norm

    world, (rows, dim) = len(partials), partials[0].shape
    results = []
    for rank in range(world):
        # The peers have staged their partials; this rank's buffer is NaN until it stages its own.
        buffers = [torch.full((rows * dim + 64,), float("nan"), dtype=partials[0].dtype) for _ in range(world)]
        for peer in range(world):
            if peer != rank:
                buffers[peer][: rows * dim] = partials[peer].flatten()
        pointers = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)

        class Handle:  # what the kernel reads of a symmetric-memory rendezvous handle
            buffer_ptrs_dev, signal_pad_ptrs_dev, world_size = pointers.data_ptr(), 0, world

        Handle.rank = rank
        results.append(reduce_add_norm(partials[rank], residual, norm.weight, getattr(norm, "bias", None),
                                       norm.eps, Handle, max_programs, split))
    return results


@needs_interpreter
@pytest.mark.parametrize("split", [False, True], ids=["two-barriers", "split-barrier"])
@pytest.mark.parametrize("rows,dim", [(1, 1000), (5, 33), (3, 256)])
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kernel_in_interpreter_is_sum_then_norm_kernel(monkeypatch, dtype, world, rows, dim, split):
    """Bit for bit: the float32 sum in rank order rounded to the dtype (the one-shot all-reduce),
    then fused_add_*_norm (or the plain norm kernel without a residual), with either barrier
    scheme (their cross-GPU waits are tests/gpu's). bfloat16 is left to tests/gpu (the
    interpreter's bfloat16 rounding is not the GPU's)."""
    pytest.importorskip("triton")
    import shardserve.parallel.reduce_norm_kernel as kernel_module
    from shardserve.kernels.layer_norm import fused_add_layer_norm, layer_norm
    from shardserve.kernels.rms_norm import fused_add_rms_norm, rms_norm

    monkeypatch.setattr(kernel_module, "_meet_peers", _no_barrier)
    monkeypatch.setattr(kernel_module, "_wait_peers_done", _no_done_signal)
    monkeypatch.setattr(kernel_module, "_signal_done", _no_done_signal)
    gen = torch.Generator().manual_seed(world * rows + dim)
    partials = [(torch.randn(rows, dim, generator=gen) * 2).to(dtype) for _ in range(world)]
    residual = (torch.randn(rows, dim, generator=gen) * 4 + 1).to(dtype)
    total = partials[0].float()
    for p in partials[1:]:
        total = total + p.float()
    reduced = total.to(dtype)
    rms, ln = _norms(dim, dtype)
    expected = {
        (rms, True): fused_add_rms_norm(reduced, residual, rms.weight, rms.eps),
        (rms, False): (rms_norm(reduced, rms.weight, rms.eps), reduced),
        (ln, True): fused_add_layer_norm(reduced, residual, ln.weight, ln.bias, ln.eps),
        (ln, False): (layer_norm(reduced, ln.weight, ln.bias, ln.eps), reduced),
    }
    for (norm, has_residual), (want_out, want_res) in expected.items():
        # max_programs 2: a program loops over several rows when rows > 2.
        for rank, (out, res) in enumerate(
            _run_kernel_as_every_rank(partials, residual if has_residual else None, norm, max_programs=2, split=split)
        ):
            what = f"{type(norm).__name__} residual={has_residual} rank {rank}"
            assert torch.equal(res, want_res), f"{what}: residual stream"
            assert torch.equal(out, want_out), f"{what}: normalised output"
