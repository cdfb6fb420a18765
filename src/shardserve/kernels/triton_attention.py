"""The "triton" attention backend: write this step's K/V, then attend over the paged cache.

Llama-family models pass `rotary` (positions and the float32 cos/sin caches): the rotary
embedding of q and k then happens in the same launch as the cache write
(kv_cache_write.rotary_write_kv_cache_triton), q rotated in place before attention reads it.

Same contract and numbers as the torch backend (layers/attention.py `_torch_forward`, built on
the reference in kernels/paged_attention.py). Decode-only steps (every sequence adds one token,
the steps that CUDA graphs replay) take the split-K decode kernel, which reads no host values;
any step with a longer query takes the flash-attention prefill kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from shardserve.kernels.kv_cache_write import rotary_write_kv_cache_triton, write_kv_cache_triton
from shardserve.kernels.paged_decode import paged_decode_attention
from shardserve.kernels.paged_prefill import paged_prefill_attention

if TYPE_CHECKING:  # kernels import nothing from layers at run time
    from shardserve.layers.forward_context import AttentionMetadata


def triton_attention(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    alibi_slopes: torch.Tensor | None,  # [num_heads] float32
    rotary: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # (positions, cos, sin)
) -> torch.Tensor:
    if rotary is not None:  # q and k not rotated yet: rotate q in place, k on its way in
        positions, cos_cache, sin_cache = rotary
        rotary_write_kv_cache_triton(
            positions, q, k, v, k_cache, v_cache, meta.slot_mapping, cos_cache, sin_cache
        )
    else:
        write_kv_cache_triton(k, v, k_cache, v_cache, meta.slot_mapping)
    if meta.is_decode_only:
        # One token per sequence: token i belongs to sequence i.
        return paged_decode_attention(
            q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, alibi_slopes
        )
    return paged_prefill_attention(
        q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
        meta.max_query_len, scale, alibi_slopes,
    )
