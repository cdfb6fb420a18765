"""Greedy decoding's argmax over the vocabulary, torch.argmax(x, dim=-1) for [rows, vocab] on the
GPU in two small kernels: programs over (row, chunk of the vocabulary) each find their chunk's
largest value and its first index, then one program per row picks the first chunk holding the
largest. torch's own argmax reduces a row in one thread block: for one row of Llama-3's 128256
float32 logits it took 27.5 us on an H200, about 1% of an 8-bit decode step
(benchmarks/RESULTS.md).

Same answer as torch.argmax: the first index of the largest value, NaN counting as the largest
(so a row with a NaN gives its first NaN), and index 0 for a row of -inf.
"""

from __future__ import annotations

import torch

from shardserve.kernels import _has_triton, use_fused_kernels

_CHUNK = 2048  # vocabulary entries per program: Llama-3's vocabulary makes 63 programs a row
_BLOCK = 1024

if _has_triton:
    import triton
    import triton.language as tl

    @triton.jit
    def _first_largest(vals, idxs):
        """(largest of vals, the smallest of idxs where it is), NaN counting as the largest."""
        nan = vals != vals
        any_nan = tl.max(nan.to(tl.int32), 0) > 0
        top = tl.max(tl.where(nan, float("-inf"), vals), 0)
        at = tl.where(any_nan, nan, vals == top)
        idx = tl.min(tl.where(at, idxs, 2**31 - 1), 0)
        return tl.where(any_nan, float("nan"), top), idx

    @triton.jit
    def _chunk_argmax_kernel(x_ptr, vals_ptr, idxs_ptr, n_cols, stride_x, n_chunks,
                             CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        chunk = tl.program_id(1)
        cols = chunk * CHUNK + tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_at = cols  # a lane that only meets -inf keeps its first column
        for off in tl.static_range(0, CHUNK, BLOCK):
            c = cols + off
            v = tl.load(x_ptr + row.to(tl.int64) * stride_x + c, mask=c < n_cols, other=float("-inf")).to(tl.float32)
            # Strictly larger (or the first NaN): a lane keeps the first column of its largest.
            take = (v > best) | ((v != v) & (best == best))
            best = tl.where(take, v, best)
            best_at = tl.where(take, c, best_at)
        top, at = _first_largest(best, best_at)
        tl.store(vals_ptr + row * n_chunks + chunk, top)
        tl.store(idxs_ptr + row * n_chunks + chunk, at)

    @triton.jit
    def _pick_chunk_kernel(vals_ptr, idxs_ptr, out_ptr, n_chunks, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        mask = c < n_chunks
        vals = tl.load(vals_ptr + row * n_chunks + c, mask=mask, other=float("-inf"))
        idxs = tl.load(idxs_ptr + row * n_chunks + c, mask=mask, other=2**31 - 1)
        _, at = _first_largest(vals, idxs)  # chunks hold ascending columns: the first chunk wins
        tl.store(out_ptr + row, at.to(tl.int64))


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for x [rows, vocab] (int64 [rows]), by the two kernels on a GPU
    where fused kernels are on, else by torch."""
    if not (use_fused_kernels(x) and x.dim() == 2 and x.stride(1) == 1 and x.shape[0] and x.shape[1]):
        return x.argmax(dim=-1)
    return triton_argmax(x)


def triton_argmax(x: torch.Tensor) -> torch.Tensor:
    """The two kernels on x [rows > 0, vocab > 0] with unit column stride (any device Triton runs
    on: its interpreter too)."""
    rows, n_cols = x.shape
    n_chunks = triton.cdiv(n_cols, _CHUNK)
    vals = torch.empty(rows, n_chunks, dtype=torch.float32, device=x.device)
    idxs = torch.empty(rows, n_chunks, dtype=torch.int32, device=x.device)
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    _chunk_argmax_kernel[(rows, n_chunks)](x, vals, idxs, n_cols, x.stride(0), n_chunks, CHUNK=_CHUNK, BLOCK=_BLOCK,
                                           num_warps=4)
    _pick_chunk_kernel[(rows,)](vals, idxs, out, n_chunks, BLOCK=max(16, triton.next_power_of_2(n_chunks)),
                                num_warps=1)
    return out
