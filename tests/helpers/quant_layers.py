"""Every parallel linear layer type, built quantised on one rank and loaded from full random
weights, with what it must compute: for tests/unit/quant, at TP=1 in process and on each gloo
rank at TP=2 (so the function the ranks run lives here, importable by the forked ranks).

Error bound of an 8-bit layer against the float32 layer, per output element r:
  |y_q[r] - y[r]| <= sum_k |x[k]| * e(W[r, k])
with e the largest rounding error of one weight: int8 rounds w / s to an integer, so e <= s / 2
(s = max|W[r, :]| / 127); fp8 e4m3 keeps 3 mantissa bits, so e <= |w| / 16 above its normal
range and s / 1024 below it (s = max|W[r, :]| / 448). A row-parallel rank scales only its
columns, with a scale <= the full row's, so the same bound holds for any degree.
"""

from __future__ import annotations

import torch

from shardserve.kernels.weight_formats import QMAX, quantize_rows
from shardserve.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from shardserve.layers.quant import linear_quantization

QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
HIDDEN, HEAD_DIM = 48, 8

# kind -> (constructor, {shard_id: full [rows, in] shape}); "row" is the only one split along in.
LAYERS = {
    "replicated": (lambda: ReplicatedLinear(HIDDEN, 40, bias=True), {None: (40, HIDDEN)}),
    "column": (lambda: ColumnParallelLinear(HIDDEN, 64, bias=True, gather_output=True), {None: (64, HIDDEN)}),
    "row": (lambda: RowParallelLinear(96, HIDDEN, bias=True), {None: (HIDDEN, 96)}),
    "merged": (lambda: MergedColumnParallelLinear(HIDDEN, [32, 32], bias=False), {0: (32, HIDDEN), 1: (32, HIDDEN)}),
    "qkv": (
        lambda: QKVParallelLinear(HIDDEN, HEAD_DIM, 4, 2, bias=True),
        {"q": (4 * HEAD_DIM, HIDDEN), "k": (2 * HEAD_DIM, HIDDEN), "v": (2 * HEAD_DIM, HIDDEN)},
    ),
}


def full_weights(kind: str, seed: int = 0) -> dict:
    """{shard_id: (weight, bias)}; rows have different magnitudes so a misplaced scale shows."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for shard_id, (rows, cols) in LAYERS[kind][1].items():
        w = torch.randn(rows, cols, generator=gen) * torch.rand(rows, 1, generator=gen).add(0.05)
        out[shard_id] = (w, torch.randn(rows, generator=gen))
    return out


def error_bound(x: torch.Tensor, w: torch.Tensor, quantization: str) -> torch.Tensor:
    """[T, rows]: the bound above for y = x @ w.T (plus float32 slack)."""
    scale = w.abs().amax(dim=1) / QMAX[QDTYPES[quantization]]  # [rows]
    if quantization == "int8":
        per_weight = (scale / 2)[:, None].expand_as(w)
    else:
        per_weight = w.abs() / 16 + (scale / 1024)[:, None]
    return x.abs() @ per_weight.T * (1 + 1e-4) + 1e-5


def build(kind: str, quantization: str | None):
    """The layer for this rank, on the CPU in float32, loaded from full_weights(kind)."""
    with linear_quantization(quantization):
        layer = LAYERS[kind][0]()  # uninitialised CPU parameters until loaded
    for shard_id, (w, b) in full_weights(kind).items():
        layer.weight.weight_loader(layer.weight, w, shard_id)
        if layer.bias is not None:
            layer.bias.weight_loader(layer.bias, b, shard_id)
    return layer


def local_weight(layer, kind: str) -> torch.Tensor:
    """This rank's float32 weight as the layer should hold it: [q | k | v] / [gate | up] rows of
    its heads, its rows (column) or its columns (row-parallel)."""
    weights = full_weights(kind)
    if kind in ("row", "replicated"):
        (w, _), = weights.values()
        return w.narrow(1, layer.tp_rank * layer.in_local, layer.in_local) if kind == "row" else w
    parts = sorted(layer.shard_layout.items(), key=lambda item: item[1][0])  # by offset in the param
    return torch.cat([weights[sid][0].narrow(0, start, rows) for sid, (_, rows, start) in parts])


def run_case(kind: str, quantization: str, tokens: int = 5) -> dict:
    """On one rank: the quantised layer's output, the float32 layer's, the bound between them,
    and the 8-bit weight and scales the layer stored next to those quantize_rows gives for
    this rank's slice."""
    gen = torch.Generator().manual_seed(1)
    x_full = torch.randn(tokens, 96 if kind == "row" else HIDDEN, generator=gen)
    quantized, plain = build(kind, quantization), build(kind, None)
    # A row-parallel layer is fed its rank's columns of the input.
    x = x_full.narrow(1, plain.tp_rank * plain.in_local, plain.in_local) if kind == "row" else x_full
    with torch.no_grad():
        out, ref = quantized(x), plain(x)
    w_local = local_weight(quantized, kind)
    q, scale = quantize_rows(w_local, QDTYPES[quantization])
    # Outputs of column (gathered), row (reduced) and replicated layers are the full ones.
    w_out = torch.cat([w for w, _ in full_weights(kind).values()]) if kind in ("column", "row") else w_local
    return {
        "out": out, "fp32": ref, "bound": error_bound(x_full, w_out, quantization),
        # 8-bit weights as their bytes: float8 tensors do not survive pickling between ranks.
        "stored": (quantized.weight.data.view(torch.uint8), quantized.weight_scale.data),
        "expected": (q.view(torch.uint8), scale),
    }


def all_cases() -> list[dict]:
    """run_case for every layer type and both formats, in sorted(LAYERS) x (int8, fp8) order."""
    return [run_case(kind, q) for kind in sorted(LAYERS) for q in ("int8", "fp8")]
