"""Attention over the paged KV cache, behind one interface for every backend.

Models call `Attention(q, k, v)` with the step's new tokens; the layer writes their K/V into its
cache slice and attends over each sequence's full context using the step's `AttentionMetadata`.
Backends: "torch" (the reference in kernels/paged_attention.py; CPU and ground truth) and
"triton" (GPU kernels), chosen once at construction.

Models with rotary position embeddings (Llama family) pass unrotated q and k with `positions` and
their `RotaryEmbedding`: the torch backend (and the triton one with the small fused kernels off)
applies the module, then writes the cache as before; the triton backend rotates q and k inside
the cache-write launch (kernels/kv_cache_write.py), one launch per layer instead of two.
"""

from __future__ import annotations

import torch
from torch import nn

from shardserve.kernels import use_fused_kernels
from shardserve.kernels.paged_attention import (
    paged_attention_reference,
    paged_decode_batched,
    write_kv_cache,
)
from shardserve.layers.forward_context import AttentionMetadata, get_forward_context
from shardserve.layers.rotary import RotaryEmbedding

_BACKENDS = ("torch", "triton")
_default_backend = "torch"


def set_default_attention_backend(name: str) -> None:
    """Chosen by the engine from EngineConfig before the model is built."""
    global _default_backend
    if name not in _BACKENDS:
        raise ValueError(f"attention_backend must be one of {_BACKENDS}, got {name!r}")
    _default_backend = name


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads or num_heads
        self.scale = scale
        self.backend = _default_backend
        if alibi_slopes is not None:
            self.register_buffer("alibi_slopes", alibi_slopes.float(), persistent=False)
        else:
            self.alibi_slopes = None
        # Set by the model runner once the cache is allocated:
        # ([num_blocks, block_size, num_kv_heads, head_dim], same) for K and V.
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor | None = None,
        rotary: RotaryEmbedding | None = None,
    ) -> torch.Tensor:
        """q: [num_tokens, num_heads * head_dim]; k, v: [num_tokens, num_kv_heads * head_dim].

        With `rotary`, q and k are not rotated yet and `positions` [num_tokens] (on q's device)
        gives each token's position; q may be rotated in place.
        """
        meta = get_forward_context()
        num_tokens = q.shape[0]
        fused_rotary = None
        if rotary is not None:
            assert positions is not None, "rotary needs positions"
            if self.backend == "triton" and use_fused_kernels(q):
                fused_rotary = (positions, rotary.cos_cache, rotary.sin_cache)
            else:
                q, k = rotary(positions, q, k)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        assert self.kv_cache is not None, "KV cache not allocated"
        k_cache, v_cache = self.kv_cache
        if self.backend == "triton":
            from shardserve.kernels.triton_attention import triton_attention

            out = triton_attention(
                q, k, v, k_cache, v_cache, meta, self.scale, self.alibi_slopes, rotary=fused_rotary
            )
        else:
            out = self._torch_forward(q, k, v, k_cache, v_cache, meta)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    def _torch_forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            return paged_decode_batched(
                q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.max_seq_len,
                self.scale, self.alibi_slopes,
            )
        return paged_attention_reference(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.query_start_loc_host,
            meta.seq_lens_host,
            self.scale,
            self.alibi_slopes,
        )
