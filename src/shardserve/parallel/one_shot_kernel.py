"""One-shot all-reduce over symmetric memory in a single Triton kernel, for float16, bfloat16 and
float32 (torch's own one-shot op has no float16 instance, and OPT runs in float16).

Every rank launches the same grid on the same number of elements. Program p takes the chunks
p, p + programs, ... of the input and
  1. stages them in this rank's symmetric buffer;
  2. meets program p of every rank at a barrier in the signal pads (its stores released before
     it signals, the peers' acquired before it reads);
  3. reads those chunks from every rank's buffer over NVLink and sums them in float32, ranks in
     order 0..world-1, so every rank gets the same bits (each rank samples from its own copy of
     the logits: they must agree);
  4. makes sure no rank overwrites its buffer (the next call's step 1) before every peer has
     read it: a second barrier, or (SPLIT, the default) the split barrier below.
One launch and one or two NVLink round trips on the critical path, where a copy kernel, torch's
one-shot kernel and NCCL's ring pay more launches or more round trips.

The barrier is the zero-reset flag protocol of torch's symmetric-memory barriers: program p of
rank r sets slot [p, r] of each peer's signal pad from 0 to 1 (spinning while the peer has not
yet consumed the previous flag) and waits for every peer's flag in its own slots [p, *], resetting
each to 0 as it takes it. Pads start zeroed and end zeroed, so the kernel replays from CUDA graphs.
One thread per peer does the atomics (system scope); a CTA barrier before and after orders the
other threads' stores and loads around them.

SPLIT (the split barrier, on unless EngineConfig.extra {"all_reduce_split_barrier": False}; it
took OPT-30B TP4 decode from 5.40 to 5.19 ms a step on 4x H200, benchmarks/RESULTS.md): step 4
moves off the critical path. Each program instead adds 1 to its rank's "done" counter in every
peer's signal pad (after the pads' flag slots) once its reads are over, and the next call's
programs wait, before step 1, until every peer's counter in their own pad has reached their own
rank's: every program of every peer has then finished reading every earlier call's buffer,
whatever positions its programs covered (so the one-shot and the norm kernel, which map
positions to programs differently, can follow each other). The counters only grow (compared by
signed difference, so they may wrap), and all ranks run the same grids, so they stay in step. By
the next call the peers' signals have long arrived, behind the matmuls in between: one NVLink
round trip per call instead of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels.pdl import pdl_args, pdl_entry

CHUNK_BYTES = 2048  # per program and iteration: 16 bytes per thread at 4 warps


@triton.jit
def _thread_index():
    return tl.inline_asm_elementwise("mov.u32 $0, %tid.x;", "=r", [], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _swap_flag(addrs, SEM: tl.constexpr, OLD: tl.constexpr, NEW: tl.constexpr):
    """Wait until *addr == OLD, then set it to NEW, in one compare-and-swap at system scope."""
    tl.inline_asm_elementwise(
        f"""{{
        .reg .u32 %seen;
        .reg .pred %swapped;
        retry:
        atom.global.{SEM}.sys.cas.b32 %seen, [$1], {OLD}, {NEW};
        setp.eq.u32 %swapped, %seen, {OLD};
        @!%swapped bra retry;
        }}""",
        "=r, l", [addrs], dtype=tl.int32, is_pure=False, pack=1,
    )


@triton.jit
def _meet_peers(signal_pads, slot, RANK: tl.constexpr, WORLD: tl.constexpr, TAKE_SEM: tl.constexpr):
    """Return once program `slot` of every rank has reached this point. This program's earlier
    memory accesses are released to the peers; TAKE_SEM "acquire" also makes theirs visible here."""
    peers = tl.arange(0, WORLD)
    pads = signal_pads.to(tl.pointer_type(tl.uint64))
    to_peers = tl.load(pads + peers).to(tl.pointer_type(tl.int32)) + slot * WORLD + RANK
    from_peers = tl.load(pads + RANK).to(tl.pointer_type(tl.int32)) + slot * WORLD + peers
    tl.debug_barrier()  # every thread's accesses so far precede the release below
    if _thread_index() < WORLD:  # thread i holds element i of the [WORLD] address vectors
        _swap_flag(to_peers, "release", 0, 1)  # raise our flag once the peer took the last one
        _swap_flag(from_peers, TAKE_SEM, 1, 0)  # take the peer's flag
    tl.debug_barrier()


@triton.jit
def _wait_peers_done(signal_pads, done_slot, RANK: tl.constexpr, WORLD: tl.constexpr):
    """SPLIT: return once every peer's done counter in this rank's pad has reached this rank's."""
    pads = signal_pads.to(tl.pointer_type(tl.uint64))
    counters = tl.load(pads + RANK).to(tl.pointer_type(tl.int32)) + done_slot
    own = tl.load(counters + RANK, volatile=True)  # only this rank's earlier kernels wrote it
    if _thread_index() < WORLD:  # thread i holds element i of the [WORLD] vector
        tl.inline_asm_elementwise(
            """{
            .reg .s32 %seen;
            .reg .pred %behind;
            retry:
            ld.acquire.sys.global.s32 %seen, [$1];
            sub.s32 %seen, %seen, $2;
            setp.lt.s32 %behind, %seen, 0;
            @%behind bra retry;
            mov.u32 $0, 0;
            }""",
            "=r, l, r", [counters + tl.arange(0, WORLD), own + tl.zeros((WORLD,), tl.int32)],
            dtype=tl.int32, is_pure=False, pack=1,
        )
    tl.debug_barrier()  # no thread stages before the wait is over


@triton.jit
def _signal_done(signal_pads, done_slot, RANK: tl.constexpr, WORLD: tl.constexpr):
    """SPLIT: this program's reads of the peers' buffers are over: add 1 to this rank's done
    counter in every pad (this rank's own too), released after them."""
    pads = signal_pads.to(tl.pointer_type(tl.uint64))
    peers = tl.arange(0, WORLD)
    to_peers = tl.load(pads + peers).to(tl.pointer_type(tl.int32)) + done_slot + RANK
    tl.debug_barrier()  # every thread's loads precede the release below
    if _thread_index() < WORLD:
        tl.inline_asm_elementwise("atom.global.release.sys.add.s32 $0, [$1], 1;", "=r, l", [to_peers],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _one_shot_kernel(x_ptr, out_ptr, buffer_ptrs, signal_pads, numel, done_slot,
                     RANK: tl.constexpr, WORLD: tl.constexpr, BLOCK: tl.constexpr, SPLIT: tl.constexpr,
                     PDL: tl.constexpr):
    pdl_entry(PDL)
    if SPLIT:
        _wait_peers_done(signal_pads, done_slot, RANK, WORLD)
    pid, programs = tl.program_id(0), tl.num_programs(0)
    dtype = x_ptr.dtype.element_ty
    buffers = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    # Symmetric buffers are page-aligned: telling Triton lets it move 16 bytes per access.
    mine = tl.multiple_of(tl.load(buffers + RANK).to(tl.pointer_type(dtype)), 16)
    for start in range(pid * BLOCK, numel, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < numel
        tl.store(mine + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)
    _meet_peers(signal_pads, pid, RANK, WORLD, "acquire")
    for start in range(pid * BLOCK, numel, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < numel
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for peer in tl.static_range(WORLD):
            theirs = tl.multiple_of(tl.load(buffers + peer).to(tl.pointer_type(dtype)), 16)
            acc += tl.load(theirs + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, acc.to(dtype), mask=mask)
    if SPLIT:
        _signal_done(signal_pads, done_slot, RANK, WORLD)
    else:
        _meet_peers(signal_pads, pid, RANK, WORLD, "relaxed")  # only our reads must precede


def pad_programs(signal_pad_size: int, world: int) -> int:
    """How many programs the signal pads have room for: world int32 flag slots per program, and
    after all of them the split barrier's world done counters (`done_offset`)."""
    return (signal_pad_size // 4 - world) // world


def done_offset(handle, max_programs: int) -> int:
    """The int32 offset of the done counters in each signal pad: after the flag slots."""
    return max_programs * handle.world_size


def one_shot_all_reduce(x: torch.Tensor, handle, max_programs: int, split: bool) -> torch.Tensor:
    """Sum of the contiguous x over the ranks of `handle` (a symmetric-memory rendezvous of a
    buffer of at least x.nbytes; power-of-two world size), as a new tensor. At most
    `max_programs` programs: each uses world_size slots of the signal pads; with `split` (the
    split barrier) the world_size int32 after those slots hold the done counters."""
    out = torch.empty_like(x)
    block = CHUNK_BYTES // x.element_size()
    grid = (max(1, min(triton.cdiv(x.numel(), block), max_programs)),)
    _one_shot_kernel[grid](x, out, handle.buffer_ptrs_dev, handle.signal_pad_ptrs_dev, x.numel(),
                           done_offset(handle, max_programs), RANK=handle.rank, WORLD=handle.world_size, BLOCK=block,
                           SPLIT=split, num_warps=4, **pdl_args(x))
    return out
