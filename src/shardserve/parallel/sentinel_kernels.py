"""One-shot all-reduce without barriers, the "sentinel" protocol, in Triton: the one-shot sum and
the sum fused with the residual add and the norm (as one_shot_kernel.py and
reduce_norm_kernel.py), with the same float32 sums and so the same bits.

Why: the barrier kernels pay, on the critical path of every call, a compare-and-swap in each
peer's signal pad (an NVLink round trip), the wait for the peers' flags, then reads of the peers'
buffers (another round trip). Here the data is its own flag. Every cell of a rank's receive
buffer holds a sentinel (the bits of negative zero: 0x8000 in each 16-bit half) until a peer
writes a value there, and no value a peer sends has those bits (a negative zero is sent as a
positive one: the float32 sum, which starts at +0, is the same either way). So each rank
  1. stores its share into its own slot of every peer's buffer (one-way NVLink writes);
  2. reads its own buffer until no cell it needs holds the sentinel, sums the slots (and its own
     share) in float32, ranks in order 0..world-1, as the barrier kernels do;
  3. writes the sentinel back into the cells it read.
The critical path is one one-way NVLink write; no atomics go over NVLink.

Buffers: each rank's symmetric buffer holds two sets (by the call's parity) of one slot per
sender. Call c uses set c % 2, so a peer that has already finished call c and starts c + 1
writes where this rank is not reading. A peer reaches call c + 2 only once it has this rank's
share of c + 1, which this rank sends after call c has finished, clearing included: set c % 2 is
clean by then. The call count lives in this rank's `state` (int32 [calls, programs done]): every
program reads it at the start, and the last program to finish adds one. All ranks make the same
calls in the same order, so their counts agree; any number of calls between two replays of a
CUDA graph is fine, since the count is read on the device.

A program waits only for programs of the peers that push before they wait. Programs start in
order, and at the default size limit (512 KB: at most 512 programs of 4 warps) the whole grid is
resident at once anyway, so every wait ends.

A float32 share with the bits 0x80008000 (a negative denormal, -4.6e-41) is sent as +0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels import norm_row_launch
from shardserve.kernels.pdl import pdl_args, pdl_entry
from shardserve.parallel.reduce_norm_kernel import _add_norm_store

# What one program pushes: of the one-shot sum (1 KB measured faster than 2 and 4 KB on 4x H200 at
# 8-512 KB, benchmarks/allreduce_sweep.py), and of a row in the fused kernel.
CHUNK_BYTES = 1024
NORM_PART_BYTES = 4096
SENTINEL_INT16 = -0x8000  # every 16-bit half of every buffer cell holds these bits until written


def cell_bits(dtype: torch.dtype) -> tuple:
    """(BITS, SENTINEL): the integer type a cell of `dtype` is read as, and the sentinel's value."""
    if dtype.itemsize == 2:
        return tl.int16, SENTINEL_INT16
    return tl.int32, -0x7FFF8000  # 0x80008000


@triton.jit
def _begin(state_ptr, buffer_ptrs, slot_elems, RANK: tl.constexpr, WORLD: tl.constexpr, BITS: tl.constexpr):
    """-> (the call count, this rank's slots of the call's set, this rank's slot in any buffer)."""
    calls = tl.load(state_ptr, volatile=True)
    first = (calls % 2) * WORLD * slot_elems
    buffers = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    # Symmetric buffers are page-aligned and every slot a multiple of 16 bytes: 16-byte accesses.
    mine = tl.multiple_of(tl.load(buffers + RANK).to(tl.pointer_type(BITS)) + first, 16)
    return calls, mine, first + RANK * slot_elems


@triton.jit
def _share(x_ptr, offs, mask, BITS: tl.constexpr, SENTINEL: tl.constexpr):
    """This rank's share at offs as sent: its bits, with no cell equal to the sentinel."""
    share = tl.load(x_ptr + offs, mask=mask).to(BITS, bitcast=True)
    return tl.where(share == SENTINEL, tl.zeros_like(share), share)


@triton.jit
def _push(share, offs, mask, buffer_ptrs, my_slot, RANK: tl.constexpr, WORLD: tl.constexpr, BITS: tl.constexpr):
    """Store this rank's share into its slot of every peer's buffer."""
    buffers = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    for peer in tl.static_range(WORLD):
        if peer != RANK:
            theirs = tl.multiple_of(tl.load(buffers + peer).to(tl.pointer_type(BITS)) + my_slot, 16)
            tl.store(theirs + offs, share, mask=mask)


@triton.jit
def _gather_sum(share, mine, offs, mask, slot_elems, RANK: tl.constexpr, WORLD: tl.constexpr,
                SENTINEL: tl.constexpr, dtype: tl.constexpr):
    """Wait for every peer's cells at offs, sum all shares in float32 in rank order, and put the
    sentinel back into the cells for the call after next."""
    acc = tl.zeros(offs.shape, dtype=tl.float32)
    for peer in tl.static_range(WORLD):
        if peer == RANK:
            value = share
        else:
            cells = mine + peer * slot_elems + offs
            value = tl.load(cells, mask=mask, other=0, volatile=True)
            while tl.max(((value == SENTINEL) & mask).to(tl.int32), axis=0) > 0:
                value = tl.load(cells, mask=mask, other=0, volatile=True)
            tl.store(cells, tl.full(offs.shape, SENTINEL, value.dtype), mask=mask)
        acc += value.to(dtype, bitcast=True).to(tl.float32)
    return acc


@triton.jit
def _end(state_ptr, calls):
    """The last program of call number `calls` to finish counts it (and resets the programs count)."""
    done = tl.atomic_add(state_ptr + 1, 1, sem="acq_rel")
    if done == tl.num_programs(0) * tl.num_programs(1) - 1:
        tl.store(state_ptr + 1, 0)
        tl.store(state_ptr, calls + 1)


@triton.jit
def _sentinel_sum_kernel(x_ptr, out_ptr, buffer_ptrs, state_ptr, numel, slot_elems, RANK: tl.constexpr,
                         WORLD: tl.constexpr, BITS: tl.constexpr, SENTINEL: tl.constexpr, BLOCK: tl.constexpr,
                         PDL: tl.constexpr):
    pdl_entry(PDL)
    calls, mine, my_slot = _begin(state_ptr, buffer_ptrs, slot_elems, RANK, WORLD, BITS)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # one chunk per program
    mask = offs < numel
    share = _share(x_ptr, offs, mask, BITS, SENTINEL)
    _push(share, offs, mask, buffer_ptrs, my_slot, RANK, WORLD, BITS)
    acc = _gather_sum(share, mine, offs, mask, slot_elems, RANK, WORLD, SENTINEL, x_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, acc.to(x_ptr.dtype.element_ty), mask=mask)
    _end(state_ptr, calls)


@triton.jit
def _sentinel_norm_kernel(x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, res_out_ptr, buffer_ptrs, state_ptr,
                          n_cols, eps, slot_elems, RANK: tl.constexpr, WORLD: tl.constexpr,
                          BITS: tl.constexpr, SENTINEL: tl.constexpr, RMS: tl.constexpr,
                          HAS_RESIDUAL: tl.constexpr, PART: tl.constexpr, BLOCK: tl.constexpr,
                          PDL: tl.constexpr):
    pdl_entry(PDL)
    calls, mine, my_slot = _begin(state_ptr, buffer_ptrs, slot_elems, RANK, WORLD, BITS)
    row, part = tl.program_id(0), tl.program_id(1)
    # Program (row, part) pushes one part of the row: one program pushing a whole row of
    # BLOOM-176B's (3 x 28 KB) took longer than the barrier kernel's whole call.
    part_cols = part * PART + tl.arange(0, PART)
    part_mask = part_cols < n_cols
    part_offs = row * n_cols + part_cols  # every tensor and slot here is [rows, n_cols] contiguous
    _push(_share(x_ptr, part_offs, part_mask, BITS, SENTINEL), part_offs, part_mask, buffer_ptrs, my_slot,
          RANK, WORLD, BITS)
    if part == 0:  # and one program per row waits for the whole row, sums and normalises it
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        offs = row * n_cols + cols
        share = _share(x_ptr, offs, mask, BITS, SENTINEL)
        acc = _gather_sum(share, mine, offs, mask, slot_elems, RANK, WORLD, SENTINEL, x_ptr.dtype.element_ty)
        _add_norm_store(acc, res_ptr, w_ptr, b_ptr, out_ptr, res_out_ptr, offs, cols, mask, n_cols, eps,
                        RMS, HAS_RESIDUAL)
    _end(state_ptr, calls)


def sentinel_buffer_bytes(max_bytes: int, world: int) -> int:
    """The symmetric buffer a rank needs for sums of up to max_bytes: two sets of world slots."""
    return 2 * world * max_bytes


def sentinel_all_reduce(x: torch.Tensor, handle, state: torch.Tensor, slot_bytes: int) -> torch.Tensor:
    """Sum of the contiguous x (at most slot_bytes) over the ranks of `handle`, a rendezvous of a
    buffer of sentinel_buffer_bytes(slot_bytes, world) filled with the sentinel; `state`: this
    rank's int32 [2], zeros at the start, one per handle."""
    out = torch.empty_like(x)
    block = CHUNK_BYTES // x.element_size()
    grid = (max(1, triton.cdiv(x.numel(), block)),)
    bits, sentinel = cell_bits(x.dtype)
    _sentinel_sum_kernel[grid](x, out, handle.buffer_ptrs_dev, state, x.numel(), slot_bytes // x.element_size(),
                               RANK=handle.rank, WORLD=handle.world_size, BITS=bits, SENTINEL=sentinel, BLOCK=block,
                               num_warps=4, **pdl_args(x))
    return out


def sentinel_add_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                      bias: torch.Tensor | None, eps: float, handle, state: torch.Tensor, slot_bytes: int):
    """reduce_norm_kernel.reduce_add_norm's result and bits, by the sentinel protocol (as
    sentinel_all_reduce)."""
    out, res_out = torch.empty_like(x), torch.empty_like(x)
    rows, dim = x.shape
    if rows == 0:
        return out, res_out
    res = x if residual is None else residual  # never read without a residual (HAS_RESIDUAL off)
    block, num_warps = norm_row_launch(dim)
    part = min(block, NORM_PART_BYTES // x.element_size())
    bits, sentinel = cell_bits(x.dtype)
    _sentinel_norm_kernel[(rows, triton.cdiv(dim, part))](
        x, res, weight, weight if bias is None else bias, out, res_out, handle.buffer_ptrs_dev, state, dim, eps,
        slot_bytes // x.element_size(), RANK=handle.rank, WORLD=handle.world_size, BITS=bits,
        SENTINEL=sentinel, RMS=bias is None,
        HAS_RESIDUAL=residual is not None, PART=part, BLOCK=block, num_warps=num_warps, **pdl_args(x),
    )
    return out, res_out
