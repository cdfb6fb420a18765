"""All-reduce, residual add and norm in one Triton kernel: the one-shot all-reduce of
one_shot_kernel.py on a row-parallel layer's partial products, followed by what
kernels/layer_norm.py and kernels/rms_norm.py do with the sum and the residual, bit for bit.

Why: in a pre-LN decoder every row-parallel output is all-reduced and then added to the residual
and normalised; as two kernels that is one norm launch (~2-3 us at decode) per all-reduce, 96 a
step for OPT-30B at TP4. Here the norm runs in the same kernel, on the reduced row.

A row is cut into chunks of CHUNK columns (fast_all_reduce.DEFAULT_NORM_CHUNK), and the (row,
chunk) units are spread over the programs: one program a row would leave decode's 4 rows to 4
SMs, each reading every peer's row over NVLink, where many SMs can read in parallel. Program p
takes units p, p + programs, ...:
  1. stages them in this rank's symmetric buffer;
  2. meets program p of every rank (the one-shot kernel's barrier, slot p of the signal pads);
  3. per unit: sums every rank's chunk in float32, ranks in order 0..world-1, and rounds it to the
     dtype (the one-shot kernel's bits); adds the residual and rounds again; stores that, the new
     residual stream, and counts the chunk done in its row's counter;
  4. the program that finds its row's last chunk done normalises the whole row, read back from
     the residual stream, with the norm kernels' own row functions, launched with their block
     size and warps so that the row sums reduce in the same order, and zeroes the counter for the
     next call (CUDA-graph replays);
  5. lets the peers reuse their buffers (the split barrier's done signal, or a second meeting).
Every rank computes the same rows from the same bits in the same order: every rank gets the same
output, as every rank must (each rank samples from its own copy of the logits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardserve.kernels import norm_row_launch
from shardserve.kernels.layer_norm import _layer_norm_row
from shardserve.kernels.pdl import pdl_args, pdl_entry
from shardserve.kernels.rms_norm import _rms_norm_row
from shardserve.parallel.one_shot_kernel import (
    _meet_peers,
    _signal_done,
    _wait_peers_done,
    done_offset,
)


@triton.jit
def _reduce_norm_kernel(x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, res_out_ptr, buffer_ptrs, signal_pads,
                        row_counts, n_rows, n_cols, eps, done_slot, RANK: tl.constexpr, WORLD: tl.constexpr,
                        RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
                        CHUNK: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr):
    pdl_entry(PDL)
    if SPLIT:  # one_shot_kernel.py: the split barrier
        _wait_peers_done(signal_pads, done_slot, RANK, WORLD)
    pid, programs = tl.program_id(0), tl.num_programs(0)
    chunks = tl.cdiv(n_cols, CHUNK)
    dtype = x_ptr.dtype.element_ty
    buffers = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    # Symmetric buffers are page-aligned: telling Triton lets it move 16 bytes per access.
    mine = tl.multiple_of(tl.load(buffers + RANK).to(tl.pointer_type(dtype)), 16)
    for unit in range(pid, n_rows * chunks, programs):
        cols = (unit % chunks) * CHUNK + tl.arange(0, CHUNK)
        offs = (unit // chunks) * n_cols + cols  # every tensor and buffer is [n_rows, n_cols] contiguous
        tl.store(mine + offs, tl.load(x_ptr + offs, mask=cols < n_cols), mask=cols < n_cols)
    _meet_peers(signal_pads, pid, RANK, WORLD, "acquire")
    for unit in range(pid, n_rows * chunks, programs):
        row = unit // chunks
        cols = (unit % chunks) * CHUNK + tl.arange(0, CHUNK)
        mask = cols < n_cols
        offs = row * n_cols + cols
        acc = tl.zeros((CHUNK,), dtype=tl.float32)
        for peer in tl.static_range(WORLD):
            theirs = tl.multiple_of(tl.load(buffers + peer).to(tl.pointer_type(dtype)), 16)
            acc += tl.load(theirs + offs, mask=mask, other=0.0).to(tl.float32)
        s = acc.to(dtype)  # the all-reduced chunk as the one-shot kernel stores it
        if HAS_RESIDUAL:  # rounded first, as the norm kernels: the new residual stream
            s = (s.to(tl.float32) + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(dtype)
        tl.store(res_out_ptr + offs, s, mask=mask)
        tl.debug_barrier()  # every thread's stores precede the count's release
        if tl.atomic_add(row_counts + row, 1, sem="acq_rel", scope="gpu") == chunks - 1:
            tl.store(row_counts + row, 0)
            full = tl.arange(0, BLOCK)
            row_mask = full < n_cols
            # Read past L1, which may hold lines of the row from before the other programs' stores.
            # Zero past n_cols, where the statistics must not see anything.
            x = tl.load(res_out_ptr + row * n_cols + full, mask=row_mask, other=0.0,
                        cache_modifier=".cg").to(tl.float32)
            w = tl.load(w_ptr + full, mask=row_mask, other=0.0)
            if RMS:
                normed = _rms_norm_row(x, w, n_cols, eps)
            else:
                b = tl.load(b_ptr + full, mask=row_mask, other=0.0)
                normed = _layer_norm_row(x, w.to(tl.float32), b.to(tl.float32), row_mask, n_cols, eps).to(dtype)
            tl.store(out_ptr + row * n_cols + full, normed, mask=row_mask)
    if SPLIT:
        _signal_done(signal_pads, done_slot, RANK, WORLD)
    else:
        _meet_peers(signal_pads, pid, RANK, WORLD, "relaxed")  # only our reads must precede


def reduce_add_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                    bias: torch.Tensor | None, eps: float, handle, row_counts: torch.Tensor,
                    max_programs: int, split: bool, chunk: int):
    """x [T, dim] contiguous, this rank's partial sum; s = the sum of x over the ranks of `handle`
    (a symmetric-memory rendezvous of a buffer of at least x.nbytes; power-of-two world size)
    plus residual [T, dim] (contiguous) when given. -> (norm(s), s), new contiguous
    tensors: LayerNorm with `bias`, RMSNorm without; weight (and bias) in x's dtype.
    row_counts: int32 zeros on x's device, at least T of them, left zeroed. chunk: columns per
    unit of work, a power of two (capped at the row's block), or 0 for whole rows. At most
    `max_programs` programs: each uses world_size slots of the signal pads (`split`: as in
    one_shot_all_reduce)."""
    out, res_out = torch.empty_like(x), torch.empty_like(x)
    rows, dim = x.shape
    if rows == 0:
        return out, res_out
    assert row_counts.numel() >= rows, "the caller checks this"
    res = x if residual is None else residual  # never read without a residual (HAS_RESIDUAL off)
    block, num_warps = norm_row_launch(dim)
    chunk = min(chunk, block) if chunk > 0 else block
    _reduce_norm_kernel[(min(rows * triton.cdiv(dim, chunk), max_programs),)](
        x, res, weight, weight if bias is None else bias, out, res_out, handle.buffer_ptrs_dev,
        handle.signal_pad_ptrs_dev, row_counts, rows, dim, eps, done_offset(handle, max_programs),
        RANK=handle.rank, WORLD=handle.world_size, RMS=bias is None, HAS_RESIDUAL=residual is not None,
        BLOCK=block, CHUNK=chunk, SPLIT=split, num_warps=num_warps, **pdl_args(x),
    )
    return out, res_out
