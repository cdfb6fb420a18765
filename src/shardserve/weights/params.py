"""The weight protocol shared by layers and loaders.

Every model parameter is made by `new_param` and carries:
  - `weight_loader(param, loaded, shard_id)`: copies this rank's part of a checkpoint tensor in;
  - `shard_shapes`: {shard_id: full logical shape of the checkpoint tensor for that shard}
    (shard_id None for an ordinary tensor; "q"/"k"/"v" or 0/1 for tensors packed into one param).
`loaded` is a torch tensor or a lazy slice (safetensors `get_slice`, or weights.random_init's
generator) so that a rank reads only the part it owns: `narrow` is the one way to cut it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class LazySlice(Protocol):
    """What safetensors' `safe_open(...).get_slice(name)` returns: shape + indexing, lazily read."""

    def get_shape(self) -> list[int]: ...

    def __getitem__(self, index: Any) -> torch.Tensor: ...


Loaded = torch.Tensor | LazySlice
WeightLoader = Callable[[nn.Parameter, Loaded, Any], None]


def shape_of(loaded: Loaded) -> tuple[int, ...]:
    return tuple(loaded.shape) if isinstance(loaded, torch.Tensor) else tuple(loaded.get_shape())


def narrow(loaded: Loaded, dim: int, start: int, length: int) -> torch.Tensor:
    """loaded[..., start:start+length, ...] along `dim`, reading only that part of a lazy slice."""
    if isinstance(loaded, torch.Tensor):
        return loaded.narrow(dim, start, length)
    index = [slice(None)] * len(loaded.get_shape())
    index[dim] = slice(start, start + length)
    return loaded[tuple(index)]


def read_all(loaded: Loaded) -> torch.Tensor:
    """The whole tensor (for replicated parameters, which every rank holds in full)."""
    return loaded if isinstance(loaded, torch.Tensor) else loaded[:]


def new_param(
    shape: tuple[int, ...], weight_loader: WeightLoader, shard_shapes: dict, dtype: torch.dtype | None = None
) -> nn.Parameter:
    """An uninitialised inference parameter (default dtype/device: the model is built on meta)."""
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    param.weight_loader = weight_loader
    param.shard_shapes = shard_shapes
    return param


def copy_whole(param: nn.Parameter, loaded: Loaded, shard_id: Any = None) -> None:
    """weight_loader of a replicated parameter: the checkpoint tensor is the parameter."""
    param.data.copy_(read_all(loaded))


def replicated_param(shape: tuple[int, ...]) -> nn.Parameter:
    return new_param(shape, copy_whole, {None: tuple(shape)})
