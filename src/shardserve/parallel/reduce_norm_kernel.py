"""All-reduce, residual add and norm in one Triton kernel: the one-shot all-reduce of
one_shot_kernel.py on a row-parallel layer's partial products, followed by what
kernels/layer_norm.py and kernels/rms_norm.py do with the sum and the residual, bit for bit.

Why: in a pre-LN decoder every row-parallel output is all-reduced and then added to the residual
and normalised; as two kernels that is one norm launch (~2-3 us at decode) per all-reduce, 96 a
step for OPT-30B at TP4. Here the norm runs on the reduced row while it is still in registers.

A norm needs whole rows, so program p owns rows p, p + programs, ... (not the one-shot kernel's
fixed-size chunks). It
  1. stages its rows of x in this rank's symmetric buffer;
  2. meets program p of every rank (the one-shot kernel's barrier, slot p of the signal pads);
  3. per row: sums every rank's row in float32, ranks in order 0..world-1, and rounds it to the
     dtype (the one-shot kernel's bits); adds the residual, rounds again and normalises with the
     norm kernels' own row functions, launched with their block size and warps so that the row
     sums reduce in the same order; stores the new residual stream and the normalised row;
  4. meets them again, so no rank overwrites its buffer before every peer has read it.
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
                        n_rows, n_cols, eps, done_slot, RANK: tl.constexpr, WORLD: tl.constexpr,
                        RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
                        SPLIT: tl.constexpr, PDL: tl.constexpr):
    pdl_entry(PDL)
    if SPLIT:  # one_shot_kernel.py: the split barrier
        _wait_peers_done(signal_pads, done_slot, RANK, WORLD)
    pid, programs = tl.program_id(0), tl.num_programs(0)
    dtype = x_ptr.dtype.element_ty
    buffers = buffer_ptrs.to(tl.pointer_type(tl.uint64))
    # Symmetric buffers are page-aligned: telling Triton lets it move 16 bytes per access.
    mine = tl.multiple_of(tl.load(buffers + RANK).to(tl.pointer_type(dtype)), 16)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    for row in range(pid, n_rows, programs):
        offs = row * n_cols + cols  # every tensor and buffer here is [n_rows, n_cols] contiguous
        tl.store(mine + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)
    _meet_peers(signal_pads, pid, RANK, WORLD, "acquire")
    for row in range(pid, n_rows, programs):
        offs = row * n_cols + cols
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for peer in tl.static_range(WORLD):
            theirs = tl.multiple_of(tl.load(buffers + peer).to(tl.pointer_type(dtype)), 16)
            acc += tl.load(theirs + offs, mask=mask, other=0.0).to(tl.float32)
        # The all-reduced row as the one-shot kernel stores it, read back as the norm kernels
        # read their input (zero past n_cols, where the statistics must not see anything).
        x = acc.to(dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        if not RMS:
            b = tl.load(b_ptr + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            s = (x + r).to(dtype)  # rounded first, as the norm kernels: the new residual stream
            x = s.to(tl.float32)
        else:
            s = acc.to(dtype)  # without a residual the stream is the reduced row itself
        tl.store(res_out_ptr + offs, s, mask=mask)
        if RMS:
            normed = _rms_norm_row(x, w, n_cols, eps)
        else:
            normed = _layer_norm_row(x, w.to(tl.float32), b.to(tl.float32), mask, n_cols, eps).to(dtype)
        tl.store(out_ptr + offs, normed, mask=mask)
    if SPLIT:
        _signal_done(signal_pads, done_slot, RANK, WORLD)
    else:
        _meet_peers(signal_pads, pid, RANK, WORLD, "relaxed")  # only our reads must precede


def reduce_add_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                    bias: torch.Tensor | None, eps: float, handle, max_programs: int, split: bool):
    """x [T, dim] contiguous, this rank's partial sum; s = the sum of x over the ranks of `handle`
    (a symmetric-memory rendezvous of a buffer of at least x.nbytes; power-of-two world size)
    plus residual [T, dim] (contiguous) when given. -> (norm(s), s), new contiguous
    tensors: LayerNorm with `bias`, RMSNorm without; weight (and bias) in x's dtype. At most
    `max_programs` programs: each uses world_size slots of the signal pads (`split`: as in
    one_shot_all_reduce)."""
    out, res_out = torch.empty_like(x), torch.empty_like(x)
    rows, dim = x.shape
    if rows == 0:
        return out, res_out
    res = x if residual is None else residual  # never read without a residual (HAS_RESIDUAL off)
    block, num_warps = norm_row_launch(dim)
    _reduce_norm_kernel[(min(rows, max_programs),)](
        x, res, weight, weight if bias is None else bias, out, res_out, handle.buffer_ptrs_dev,
        handle.signal_pad_ptrs_dev, rows, dim, eps, done_offset(handle, max_programs), RANK=handle.rank,
        WORLD=handle.world_size, RMS=bias is None, HAS_RESIDUAL=residual is not None, BLOCK=block, SPLIT=split,
        num_warps=num_warps, **pdl_args(x),
    )
    return out, res_out
