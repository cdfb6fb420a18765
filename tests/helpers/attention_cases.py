"""Random paged-attention inputs shared by the reference tests (CPU) and the kernel tests (GPU).

A case is a batch of sequences, each with `cached` tokens already in a randomly permuted set of
cache blocks and `q_len` new tokens; every unused cache slot holds random values too, so a
kernel that reads outside a sequence's blocks or past its length gets a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shardserve.kernels.paged_attention import paged_attention_reference, write_kv_cache


@dataclass
class PagedCase:
    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor  # [num_tokens, num_kv_heads, head_dim] (this step's new K/V)
    value: torch.Tensor
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor  # [num_tokens] int64; -1 = padding
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    query_start_loc: list[int]
    seq_lens: list[int]
    scale: float
    alibi_slopes: torch.Tensor | None

    @property
    def max_query_len(self) -> int:
        return max(b - a for a, b in zip(self.query_start_loc, self.query_start_loc[1:], strict=False))

    def expected(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(out, k_cache, v_cache) from the torch reference, on copies of the cache."""
        k_cache, v_cache = self.k_cache.clone(), self.v_cache.clone()
        write_kv_cache(self.key, self.value, k_cache, v_cache, self.slot_mapping)
        out = paged_attention_reference(
            self.query, k_cache, v_cache, self.block_tables, self.query_start_loc, self.seq_lens,
            self.scale, self.alibi_slopes,
        )
        return out, k_cache, v_cache


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """BLOOM's slopes (powers of 2^(-8/n)); exact values do not matter for kernel tests."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)])


def make_case(
    cached: list[int],
    q_lens: list[int],
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    alibi: bool = False,
    padding_tokens: int = 0,
    seed: int = 0,
) -> PagedCase:
    """`padding_tokens` extra tokens with slot -1 are appended (they belong to no sequence)."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(cached, q_lens, strict=True)]
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few blocks no sequence owns
    order = torch.randperm(num_blocks, generator=gen).tolist()
    max_blocks = max(blocks_per_seq) + 1  # one spare column: stale ids beyond the length
    block_tables = torch.randint(0, num_blocks, (len(seq_lens), max_blocks), generator=gen, dtype=torch.int32)
    slots, taken = [], 0
    for i, (c, n) in enumerate(zip(cached, seq_lens, strict=True)):
        ids = order[taken : taken + blocks_per_seq[i]]
        taken += blocks_per_seq[i]
        block_tables[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        slots += [ids[p // block_size] * block_size + p % block_size for p in range(c, n)]
    slots += [-1] * padding_tokens
    num_tokens = len(slots)
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    query_start_loc = [0]
    for q in q_lens:
        query_start_loc.append(query_start_loc[-1] + q)
    return PagedCase(
        query=rand(num_tokens, num_heads, head_dim),
        key=rand(num_tokens, num_kv_heads, head_dim),
        value=rand(num_tokens, num_kv_heads, head_dim),
        k_cache=rand(*cache_shape),
        v_cache=rand(*cache_shape),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=block_tables.to(device),
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        scale=head_dim**-0.5,
        alibi_slopes=alibi_slopes(num_heads).to(device) if alibi else None,
    )


def dense_causal_attention(q, k, v, scale, alibi_slopes=None):
    """Plain attention for one sequence whose keys are all in k/v ([seq, heads, dim], heads equal
    for q and k): an independent check of the paged reference."""
    q_len, seq_len = q.shape[0], k.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
    k_pos = torch.arange(seq_len)[None, :]
    if alibi_slopes is not None:
        scores = scores + alibi_slopes.double()[:, None, None] * (k_pos - q_pos)
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double())


def run_triton(case: PagedCase, decode: bool, **kernel_options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, k_cache, v_cache) from the Triton kernels on copies of the case's cache; the output
    is poisoned with NaN first so a row the kernel fails to write cannot pass."""
    from shardserve.kernels.kv_cache_write import write_kv_cache_triton
    from shardserve.kernels.paged_decode import paged_decode_attention
    from shardserve.kernels.paged_prefill import paged_prefill_attention

    device = case.query.device
    k_cache, v_cache = case.k_cache.clone(), case.v_cache.clone()
    write_kv_cache_triton(case.key, case.value, k_cache, v_cache, case.slot_mapping)
    num_tokens = case.query_start_loc[-1]
    q = case.query[:num_tokens]
    out = torch.full_like(q, float("nan"))
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32, device=device)
    if decode:
        paged_decode_attention(
            q, k_cache, v_cache, case.block_tables, seq_lens, case.scale, case.alibi_slopes,
            out=out, **kernel_options,
        )
    else:
        qsl = torch.tensor(case.query_start_loc, dtype=torch.int32, device=device)
        paged_prefill_attention(
            q, k_cache, v_cache, case.block_tables, qsl, seq_lens, case.max_query_len, case.scale,
            case.alibi_slopes, out=out, **kernel_options,
        )
    return out, k_cache, v_cache


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


# (name, make_case kwargs) exercised on every backend: decode-only batches go to the decode
# kernel, the rest to the prefill kernel. Odd lengths cross block and tile edges; head_dim 80
# and a GQA group of 3 are not powers of two.
KERNEL_CASES = [
    ("decode-mha", dict(cached=[0, 15, 16, 100], q_lens=[1, 1, 1, 1], num_heads=4, num_kv_heads=4)),
    ("decode-gqa4-long", dict(cached=[700, 3], q_lens=[1, 1], num_heads=8, num_kv_heads=2, head_dim=128)),
    ("decode-gqa3-d80", dict(cached=[40, 129], q_lens=[1, 1], num_heads=6, num_kv_heads=2, head_dim=80)),
    ("decode-alibi", dict(cached=[77, 5, 200], q_lens=[1, 1, 1], num_heads=4, num_kv_heads=4, alibi=True)),
    ("prefill-fresh", dict(cached=[0, 0], q_lens=[70, 5], num_heads=4, num_kv_heads=2, head_dim=64)),
    ("prefill-prefix-mixed", dict(cached=[48, 9, 0], q_lens=[37, 1, 130], num_heads=8, num_kv_heads=2)),
    ("prefill-alibi-padding", dict(cached=[17, 0], q_lens=[20, 65], num_heads=4, num_kv_heads=4, alibi=True,
                                   padding_tokens=3)),
    ("prefill-mqa-d80", dict(cached=[10], q_lens=[66], num_heads=3, num_kv_heads=1, head_dim=80, block_size=8)),
]


def check_triton_case(kwargs: dict, device, dtype: torch.dtype, tol: float, **kernel_options) -> float:
    """Run one KERNEL_CASES entry through the Triton kernels and the reference; returns the
    relative error of the attention output after asserting the caches match exactly."""
    case = make_case(dtype=dtype, device=device, **kwargs)
    decode = all(q == 1 for q in kwargs["q_lens"])
    ref_out, ref_k, ref_v = case.expected()
    out, k_cache, v_cache = run_triton(case, decode=decode, **kernel_options)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v), "cache write differs"
    err = relative_error(out, ref_out[: out.shape[0]])
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"
    return err


def check_decode_padding_rows(device, dtype, num_splits: int | None = None) -> None:
    """CUDA-graph padding: rows with seq_len 0 must come out as zeros and leave real rows as
    they are without the padding."""
    from shardserve.kernels.paged_decode import paged_decode_attention

    case = make_case([30, 5], [1, 1], dtype=dtype, device=device)
    ref_out, k_cache, v_cache = case.expected()
    pad = 3
    q = torch.cat([case.query, torch.randn(pad, *case.query.shape[1:], device=device).to(dtype)])
    tables = torch.cat([case.block_tables, torch.zeros(pad, case.block_tables.shape[1], dtype=torch.int32, device=device)])
    seq_lens = torch.tensor(case.seq_lens + [0] * pad, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, case.scale, out=out, num_splits=num_splits)
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))
    assert relative_error(out[:2], ref_out) < 5e-3
