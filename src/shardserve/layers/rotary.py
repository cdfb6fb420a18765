"""Rotary position embedding, neox style (HF Llama's rotate_half), with linear / llama3 scaling.

The cos/sin cache is a derived buffer: `init_buffers(device)` computes it on the model's device
after the parameters are materialised (the model itself is built on the meta device).

Models hand the module to their Attention layer, which calls it (torch backend) or, on the triton
backend, passes its cos/sin caches to the kernel that rotates q and k while writing the KV cache.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from shardserve.kernels import use_fused_kernels

if TYPE_CHECKING:  # duck-typed at run time: layers do not import models
    from shardserve.models.config import RopeScaling


def inverse_frequencies(head_dim: int, base: float, scaling: RopeScaling | None, device=None) -> torch.Tensor:
    """[head_dim / 2] float32 rotation speeds, as transformers' ROPE_INIT_FUNCTIONS compute them."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (base**exponents)
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotates q and k by position. One instance is shared by all layers of a model."""

    def __init__(self, head_dim: int, max_positions: int, base: float, scaling: RopeScaling | None):
        super().__init__()
        self.head_dim, self.max_positions, self.base, self.scaling = head_dim, max_positions, base, scaling
        probe = torch.empty(0)  # the ambient device: meta while load_model builds the model
        if probe.is_meta:
            # Placeholders only: computing on meta costs seconds of torch decomposition setup,
            # and load_model calls init_buffers on the real device anyway.
            half = head_dim // 2
            self.register_buffer("cos_cache", torch.empty(max_positions, half), persistent=False)
            self.register_buffer("sin_cache", torch.empty(max_positions, half), persistent=False)
        else:
            self.init_buffers(probe.device)

    def init_buffers(self, device) -> None:
        inv_freq = inverse_frequencies(self.head_dim, self.base, self.scaling, device)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)  # [max_positions, head_dim / 2]
        # Kept in float32 and cast to q's dtype at use, as HF does.
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, num_heads * head_dim]; k [T, num_kv_heads * head_dim]."""
        if use_fused_kernels(q):  # rotates q and k in place, one launch
            from shardserve.kernels.rotary import rotary_inplace

            return rotary_inplace(positions, q, k, self.cos_cache, self.sin_cache)
        cos = self.cos_cache[positions].to(q.dtype).unsqueeze(1)  # [T, 1, head_dim / 2]
        sin = self.sin_cache[positions].to(q.dtype).unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Neox layout: channel i pairs with i + head_dim/2. Equal to HF's x*cos + rotate_half(x)*sin.
    shape = x.shape
    x = x.view(shape[0], -1, cos.shape[-1] * 2)  # [T, heads, head_dim]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).view(shape)
