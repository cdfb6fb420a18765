"""Linear layers whose tensor-parallel split is chosen at construction.

Weights are [out_features, in_features] as in nn.Linear / HF checkpoints.
- ColumnParallelLinear: each rank owns out_features / tp rows; output stays split.
- RowParallelLinear: each rank owns in_features / tp columns (its input is a column-parallel
  output); partial products are all-reduced, rank 0's with the (replicated) bias added (or
  returned unreduced, for the norm that follows to reduce them: layers.norm.add_norm).
- MergedColumnParallelLinear: several column-parallel outputs packed in one matmul (gate/up).
- QKVParallelLinear: q, k, v packed; ranks own whole heads, kv heads replicated when tp > kv.
Each parameter's `weight_loader` narrows the checkpoint tensor to this rank's part.
How the weight is stored and multiplied (full precision, int8, fp8) is the layer's
`quant_method`, taken at construction from layers.quant's scoped setting.
"""

from __future__ import annotations

import torch
from torch import nn

from shardserve.layers.quant import current_linear_method
from shardserve.parallel import get_tp_rank, get_tp_size
from shardserve.parallel.comm import all_gather, all_reduce
from shardserve.weights.params import Loaded, narrow, new_param, read_all, replicated_param


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by tensor_parallel_size ({denominator})")
    return numerator // denominator


def store_rows(param: nn.Parameter, offset: int, src: torch.Tensor) -> None:
    """param[offset : offset + len(src)] = src. An 8-bit weight brings its own `store_rows`,
    which quantises the slice on the way in (layers/quant.py)."""
    store = getattr(param, "store_rows", None)
    if store is not None:
        store(param, offset, src)
    else:
        param.data.narrow(0, offset, src.shape[0]).copy_(src)


class ReplicatedLinear(nn.Module):
    """Every rank holds the full weight (small projections such as OPT's project_in/out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.quant_method = current_linear_method()
        shape = (out_features, in_features)
        self.quant_method.create_weights(self, shape, self.weight_loader, {None: shape})
        self.bias = replicated_param((out_features,)) if bias else None

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id=None) -> None:
        store_rows(param, 0, read_all(loaded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)


class ColumnParallelLinear(nn.Module):
    """y[:, rank's out slice] = x @ W[rank's rows].T (+ b[rank's rows]); gather_output joins them."""

    def __init__(self, in_features: int, out_features: int, bias: bool, gather_output: bool = False):
        super().__init__()
        self.gather_output = gather_output
        self._init_packed(in_features, {None: out_features}, bias)

    def _init_packed(self, in_features: int, full_rows: dict, bias: bool) -> None:
        """full_rows: {shard_id: logical rows}; each shard is split evenly across ranks."""
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        layout, offset = {}, 0
        for shard_id, rows in full_rows.items():
            local = divide(rows, self.tp_size, "output features")
            layout[shard_id] = (offset, local, self.tp_rank * local)
            offset += local
        self._make_params(in_features, layout, full_rows, bias)

    def _make_params(self, in_features: int, layout: dict, full_rows: dict, bias: bool) -> None:
        # layout: {shard_id: (row offset in this rank's param, rows on this rank, first row in
        # the checkpoint tensor)}; full_rows: {shard_id: rows of the checkpoint tensor}.
        self.shard_layout = layout
        local_rows = sum(rows for _, rows, _ in layout.values())
        self.quant_method = current_linear_method()
        self.quant_method.create_weights(
            self, (local_rows, in_features), self.weight_loader, {k: (n, in_features) for k, n in full_rows.items()}
        )
        self.bias = (
            new_param((local_rows,), self.weight_loader, {k: (n,) for k, n in full_rows.items()})
            if bias else None
        )

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id=None) -> None:
        # Weight [out, in] and bias [out] are both split along dim 0.
        offset, rows, start = self.shard_layout[shard_id]
        store_rows(param, offset, narrow(loaded, 0, start, rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.quant_method.apply(self, x, self.bias)  # [T, out / tp]
        return all_gather(y, dim=-1) if self.gather_output else y


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul, shard_id = index (gate_proj 0, up_proj 1).

    Output per rank: [rank's slice of output 0 | rank's slice of output 1 | ...].
    """

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool):
        nn.Module.__init__(self)
        self.gather_output = False
        self._init_packed(in_features, dict(enumerate(out_sizes)), bias)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k, v projections in one matmul; output per rank = [q | k | v] of this rank's heads.

    With num_kv_heads >= tp each rank owns num_kv_heads / tp kv heads; with fewer kv heads
    than ranks, each kv head is replicated on tp / num_kv_heads consecutive ranks (GQA).
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool):
        nn.Module.__init__(self)
        self.tp_rank, self.tp_size = tp_rank, tp_size = get_tp_rank(), get_tp_size()
        self.gather_output = False
        if num_kv_heads % tp_size and tp_size % num_kv_heads:
            raise ValueError(
                f"num_key_value_heads ({num_kv_heads}) and tensor_parallel_size ({tp_size}) must "
                "divide one another"
            )
        self.num_heads = divide(num_heads, tp_size, "num_attention_heads")
        if num_kv_heads >= tp_size:
            self.num_kv_heads = num_kv_heads // tp_size
            kv_start = tp_rank * self.num_kv_heads
        else:
            self.num_kv_heads = 1
            kv_start = tp_rank // (tp_size // num_kv_heads)
        q_rows, kv_rows = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.q_size, self.kv_size = q_rows, kv_rows
        layout = {
            "q": (0, q_rows, tp_rank * q_rows),
            "k": (q_rows, kv_rows, kv_start * head_dim),
            "v": (q_rows + kv_rows, kv_rows, kv_start * head_dim),
        }
        full_q, full_kv = num_heads * head_dim, num_kv_heads * head_dim
        self._make_params(hidden_size, layout, {"q": full_q, "k": full_kv, "v": full_kv}, bias)

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, q_size + 2 * kv_size] -> q [T, q_size], k [T, kv_size], v [T, kv_size]."""
        return qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x[:, rank's in slice] @ W[:, rank's columns].T (+ b on rank 0)).

    reduce_results=False: forward returns this rank's term of that sum, and the caller reduces it,
    together with what follows: a decoder's residual add and norm (layers.norm.add_norm, one
    kernel for all three on GPUs), or parallel.comm.all_reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool, reduce_results: bool = True):
        super().__init__()
        self.reduce_results = reduce_results
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.in_local = divide(in_features, self.tp_size, "input features")
        self.quant_method = current_linear_method()
        self.quant_method.create_weights(
            self, (out_features, self.in_local), self.weight_loader, {None: (out_features, in_features)}
        )
        # The bias is replicated; only rank 0 adds it (forward), so the sum counts it once.
        self.bias = replicated_param((out_features,)) if bias else None

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id=None) -> None:
        store_rows(param, 0, narrow(loaded, 1, self.tp_rank * self.in_local, self.in_local))

    def forward(self, x: torch.Tensor, input_act: str | None = None) -> torch.Tensor:
        """x [T, in / tp] -> [T, out]; with input_act (kernels/act_and_mul.py; x [T, 2 * in / tp]
        = [gate | up] for a gated one) the activation before this layer, applied as the matmul
        reads x (fused into the GEMM at decode sizes on GPUs: no activation kernel of its own)."""
        # Rank 0 adds the bias to its partial product inside its matmul (the GEMM's epilogue), so
        # no separate add kernel runs after the reduce: a decode step of OPT-30B at TP4 has 96.
        y = self.quant_method.apply(self, x, self.bias if self.tp_rank == 0 else None, input_act)  # [T, out]
        return all_reduce(y) if self.reduce_results else y  # summed over ranks, or this rank's term
