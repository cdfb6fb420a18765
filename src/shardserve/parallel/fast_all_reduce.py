"""An intra-node all-reduce for decode-sized tensors, faster than NCCL's ring: one-shot over
symmetric memory (torch.distributed._symmetric_memory), in our own kernel (one_shot_kernel.py).

A decode step of a TP model all-reduces a few tens of KB twice per layer (a 7168-wide model at
batch 4: 56 KB, 96 times a step; on 4 H200s in CUDA graphs NCCL took 19.3 us, torch's one-shot
10.6 us). NCCL's ring pays several NVLink round trips of latency per call; the one-shot kernel
stages the input in a buffer that every GPU of the host has mapped, meets the peers at a barrier
in their signal pads, and each rank then reads all peers' buffers over NVLink and sums them
itself: one round trip. It measured faster than NCCL at every size up to 512 KB; larger sums
(prefill's) go to NCCL (`DEFAULT_MAX_BYTES`). Our kernel takes float16 too (torch's one-shot op does
not; casting float16 to float32 around it cost more than it saved) and sums in float32.
`add_norm` goes further where a norm follows the all-reduce (a pre-LN decoder's residual add and
norm): reduce + add + norm in one kernel (reduce_norm_kernel.py), one norm launch fewer per call.
A barrier-free protocol (each rank storing its share into its peers' buffers, whose cells hold a
sentinel until written) took 32-52% off the plain sum on 4x H200 but nothing off the fused one,
which is what decode runs: measured and reverted (benchmarks/RESULTS.md, fifteenth session).

NVLink multicast is never used (TORCH_SYMM_MEM_DISABLE_MULTICAST=1 stays set; the kernel reads
peers' memory point to point). Where symmetric memory is unavailable (another torch build,
ranks on several hosts, a world size that is not a power of two, a failed self-check)
`create_fast_all_reduce` returns None and collectives stay on NCCL. Every rank takes the same
decision (agreed over NCCL), since a rank that went its own way would deadlock the others.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Up to this size the one-shot kernel measured faster than NCCL (2x H200, 8-512 KB, decode sizes).
# Up to 4 MB it was faster in CUDA graphs too, but prefill runs eagerly, where both took 36-53 us,
# launch-bound (2x H200; TP4 not measured): no gain to take there. EngineConfig.extra
# {"fast_all_reduce_max_kb": N} moves the limit.
DEFAULT_MAX_BYTES = 512 * 1024
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class SymmMemAllReduce:
    """Callable: x -> sum of x over the group (new tensor), or None to let NCCL do it.
    fuse_norm=False turns `add_norm` off (EngineConfig.extra {"fused_all_reduce_norm": False}),
    to measure what it buys. split_barrier=False (extra {"all_reduce_split_barrier": False}) runs
    the kernels with a second barrier in place of the split one (one_shot_kernel.py)."""

    def __init__(self, group: dist.ProcessGroup, device: torch.device, max_bytes: int = DEFAULT_MAX_BYTES,
                 fuse_norm: bool = True, split_barrier: bool = True):
        import torch.distributed._symmetric_memory as symm_mem

        world = dist.get_world_size(group)
        if world & (world - 1):
            raise ValueError(f"the one-shot kernel needs a power-of-two world size, got {world}")
        self.max_bytes = max_bytes
        # One byte buffer mapped by every rank; the kernel views it as the input's dtype.
        self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, group)
        from shardserve.parallel.one_shot_kernel import (  # needs Triton
            one_shot_all_reduce,
            pad_programs,
        )
        from shardserve.parallel.reduce_norm_kernel import reduce_add_norm

        self.max_programs = pad_programs(self.handle.signal_pad_size, world)
        self.fuse_norm, self.split = fuse_norm, split_barrier
        self._kernel, self._norm_kernel = one_shot_all_reduce, reduce_add_norm

    def _takes(self, x: torch.Tensor) -> bool:
        return x.dtype in _DTYPES and x.is_contiguous() and x.numel() * x.element_size() <= self.max_bytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        return self._kernel(x, self.handle, self.max_programs, self.split) if self._takes(x) else None

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor | None, norm) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(norm(s + residual), s + residual) with s the sum of x [T, dim] over the group ((norm(s),
        s) without a residual), in one kernel, with the bits of self(x) followed by the norm's
        Triton kernel. `norm`: a layers.norm LayerNorm (weight, bias, eps) or RMSNorm (weight,
        eps; no bias). None where the kernel does not apply: the caller reduces, then norms."""
        bias = getattr(norm, "bias", None)
        if not (self.fuse_norm and x.dim() == 2 and self._takes(x) and norm.weight.dtype == x.dtype
                and (bias is None or bias.dtype == x.dtype)):
            return None
        if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous()):
            return None
        return self._norm_kernel(x, residual, norm.weight, bias, norm.eps, self.handle, self.max_programs, self.split)


def ranks_share_one_host(world_size: int) -> bool:
    """Spawned ranks always do; launcher-started ones when the launcher says all are local."""
    if "WORLD_SIZE" not in os.environ:  # MultiProcExecutor: every rank is a child of this host
        return True
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    return local is not None and int(local) == world_size


def create_fast_all_reduce(
    group: dist.ProcessGroup, device: torch.device, world_size: int, fuse_norm: bool = True,
    split_barrier: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
) -> SymmMemAllReduce | None:
    """Set up and self-check the fast path on every rank; None (NCCL only) unless all succeed."""
    candidate, ok = None, False
    if device.type == "cuda" and world_size > 1 and ranks_share_one_host(world_size):
        try:
            candidate = SymmMemAllReduce(group, device, max_bytes, fuse_norm, split_barrier)
            ok = _agrees_with_nccl(candidate, group, device)
        except Exception as e:  # no symmetric memory in this build / driver / topology
            logger.warning("fast all-reduce unavailable, using NCCL: %s", e)
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    if not int(flag.item()):
        return None
    logger.info("fast all-reduce: symmetric-memory one-shot up to %d KB", candidate.max_bytes // 1024)
    return candidate


def _agrees_with_nccl(fast: SymmMemAllReduce, group: dist.ProcessGroup, device: torch.device) -> bool:
    """Random inputs (different on every rank), every dtype: the sums NCCL gives, to within the
    rounding the two orders of summation may differ by (`sum_error_bound`)."""
    gen = torch.Generator(device=device).manual_seed(1234 + dist.get_rank(group))
    for dtype in _DTYPES:
        x = torch.randn(3, 1001, generator=gen, device=device).to(dtype)  # not a whole chunk
        got = fast(x)
        want = x.clone()
        dist.all_reduce(want, group=group)
        if got is None or bool(((got.float() - want.float()).abs() > sum_error_bound(x, group)).any()):
            logger.warning("fast all-reduce disagrees with NCCL for %s; using NCCL", dtype)
            return False
    return True


def sum_error_bound(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """How far two correct all-reduce sums of x may be apart, per element: NCCL's ring rounds
    every partial sum to x's dtype (world_size - 1 roundings), the one-shot kernel sums in float32
    and rounds once; each rounding is at most half an ulp of a partial sum, whose magnitude is at
    most sum(|x|) over ranks. Twice that for slack; a missing or doubled rank's share is far out."""
    magnitude = x.float().abs()
    dist.all_reduce(magnitude, group=group)
    world = dist.get_world_size(group)
    return world * torch.finfo(x.dtype).eps * magnitude + torch.finfo(torch.float32).tiny
