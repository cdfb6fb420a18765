"""How a linear layer stores its weight and multiplies by it: full precision, INT8 or FP8.

A *linear method* is chosen when a layer is built, from the scoped setting
`linear_quantization(name)` that models.create_model enters while it constructs a model (as
torch.device("meta") scopes where its tensors go), so model files do not change and every
linear layer type (replicated, column, row, merged, qkv) is quantised the same way, and so is
the LM head of an untied model (layers/embedding.py ParallelLMHead: an output projection only,
the largest weight a decode step reads). Embedding tables keep the model dtype, lookups read
their rows, and so does a tied LM head, which is the input embedding table.

8-bit weight-only storage, this rank's part of each linear layer (and of an untied LM head):
  weight        [out, in] int8 | float8_e4m3fn
  weight_scale  [out] float32,  W ~= weight * weight_scale[:, None]  (symmetric, per output row)
Quantisation happens inside the weight_loader, one checkpoint slice at a time (the rows of a
column-parallel shard, the columns of a row-parallel weight), so a rank never holds a
full-precision copy of a whole weight: the extra memory is one float32 slice of at most
_QUANT_CHUNK elements. Both tensors are parameters: `shardserve partition --quantize` writes
them and a pre-sharded load copies them back unchanged (the scale has no checkpoint tensor of
its own in an HF checkpoint: its shard_shapes is empty and the weight's loader fills it).

Row-parallel weights: each rank scales its own columns of a row, i.e. one scale per output
channel per rank. The rank's partial product is exact for its columns and the all-reduce sums
them, so the math is unchanged; the scales are just finer than one per full row.

Forward on a GPU: kernels/tuned_gemm.tuned_linear. Decode-sized batches of an 8-bit layer run a
fused Triton kernel whose tiles are tuned per layer shape on the first eager call (the engine's
warm-up before it captures decode graphs); larger batches dequantise to the model dtype in one
pass and run one cuBLAS matmul, except FP8 with bf16 activations on Hopper, which quantises the
activations too and uses torch._scaled_mm (kernels/fp8_gemm.py). CPUs run the reference, which
is the definition of all of them.

Unquantised layers (and unquantised or tied LM heads, layers/embedding.py) multiply through
`dense_linear`: F.linear, except decode-sized fp16/bf16 batches on a GPU, where the same tuner
picks per layer shape between cuBLAS and the Triton kernels reading the 16-bit weight (cuBLAS
unless a kernel measured faster).

Input activation: `apply(layer, x, bias, input_act)` multiplies by input_act(x)
(kernels/act_and_mul.py), the activation between an MLP's two matmuls, which the second one
takes over (RowParallelLinear.forward). Decode-sized batches on a GPU fuse it into the tuned
path's GEMM kernels (or, where cuBLAS is chosen, run it as its own kernel first); everywhere
else it runs as its own step first, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from shardserve.kernels import use_fused_kernels
from shardserve.kernels.act_and_mul import apply_input_act
from shardserve.kernels.fp8_gemm import fp8_scaled_mm, scaled_mm_applies
from shardserve.kernels.gemm_kernels import kernel_applies
from shardserve.kernels.tuned_gemm import DECODE_MAX_TOKENS, tuned_linear
from shardserve.kernels.weight_formats import linear_reference, quantize_rows
from shardserve.weights.params import WeightLoader, new_param

QUANTIZATIONS = (None, "int8", "fp8")
_SOURCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_QUANT_CHUNK = 1 << 26  # elements quantised at once: bounds the float32 temporaries (256 MB)


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 input_act: str | None = None) -> torch.Tensor:
    """input_act(x) @ weight.T (+ bias) for a weight in the model dtype, x [..., in] (or
    [..., 2 * in] for a gated input_act): the activation on its own and F.linear, except
    decode-sized batches (<= DECODE_MAX_TOKENS rows) on a GPU with fused kernels on, fp16/bf16
    activations and a row-major weight of their dtype, which take the tuned path: cuBLAS's own
    F.linear call (after the activation's) or a Triton kernel (activation fused) that the tuner
    timed faster for this shape and row class."""
    if use_fused_kernels(x) and x.numel() <= DECODE_MAX_TOKENS * x.shape[-1] and kernel_applies(x, weight):
        return tuned_linear(x, weight, None, bias, input_act=input_act)
    return F.linear(apply_input_act(x, input_act), weight, bias)


class LinearMethod:
    """Unquantised: the weight in the model dtype, y = x @ W.T + b (`dense_linear`)."""

    name: str | None = None

    def create_weights(self, layer: nn.Module, shape: tuple[int, int], weight_loader: WeightLoader,
                       shard_shapes: dict) -> None:
        """Register layer.weight of this rank's [out, in] `shape` (and whatever else it needs)."""
        layer.weight = new_param(shape, weight_loader, shard_shapes)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None,
              input_act: str | None = None) -> torch.Tensor:
        """x [T, in] -> input_act(x) @ W.T (+ bias) [T, out]; x is [T, 2 * in] = [gate | up] for a
        gated input_act (kernels/act_and_mul.py), which decode-sized GPU batches fuse into the GEMM."""
        return dense_linear(x, layer.weight, bias, input_act)


class WeightOnly8Bit(LinearMethod):
    """8-bit weights with per-output-channel float32 scales; activations stay in the model dtype."""

    def __init__(self, name: str, qdtype: torch.dtype):
        self.name, self.qdtype = name, qdtype

    def create_weights(self, layer, shape, weight_loader, shard_shapes) -> None:
        weight = new_param(shape, weight_loader, shard_shapes, dtype=self.qdtype)
        # Checkpoint slices (and random init) come in the model dtype, the default while building.
        weight.checkpoint_dtype = torch.get_default_dtype()
        # linear.store_rows hands every slice meant for the weight to this, which quantises it.
        weight.store_rows = functools.partial(self._store_rows, layer)
        scale = new_param((shape[0],), _filled_by_weight, {}, dtype=torch.float32)
        layer.weight, layer.weight_scale = weight, scale

    def _store_rows(self, layer: nn.Module, param: nn.Parameter, offset: int, src: torch.Tensor) -> None:
        """Quantise a checkpoint slice src [rows, in] into weight/weight_scale rows offset.. ."""
        if src.dtype not in _SOURCE_DTYPES:
            raise ValueError(f"quantization={self.name!r} needs a floating-point checkpoint, got a {src.dtype} tensor")
        step = max(1, _QUANT_CHUNK // max(1, src.shape[1]))
        for lo in range(0, src.shape[0], step):
            q, scale = quantize_rows(src[lo : lo + step].to(param.device), self.qdtype)
            param.data[offset + lo : offset + lo + q.shape[0]].copy_(q)
            layer.weight_scale.data[offset + lo : offset + lo + q.shape[0]].copy_(scale)

    def apply(self, layer, x, bias, input_act=None):
        if use_fused_kernels(x) and kernel_applies(x, layer.weight):
            return tuned_linear(x, layer.weight, layer.weight_scale, bias, input_act=input_act)
        return linear_reference(apply_input_act(x, input_act), layer.weight, layer.weight_scale, bias)


class Fp8WeightOnly(WeightOnly8Bit):
    """FP8 e4m3 weights; prefill-sized batches on Hopper use fp8 tensor cores (W8A8)."""

    def apply(self, layer, x, bias, input_act=None):
        if use_fused_kernels(x) and scaled_mm_applies(x, layer.weight):
            # W8A8 quantises the activated input, so the activation runs first (a prefill-sized
            # batch: its own kernel is small next to the GEMM). Asked again: a gated input has
            # halved K, which cuBLASLt's fp8 GEMM needs a multiple of 16.
            x, input_act = apply_input_act(x, input_act), None
            if scaled_mm_applies(x, layer.weight):
                return fp8_scaled_mm(x, layer.weight, layer.weight_scale, bias)
        return super().apply(layer, x, bias, input_act)


def _filled_by_weight(param, loaded, shard_id=None) -> None:
    raise AssertionError("weight_scale is written by its weight's loader, never loaded on its own")


UNQUANTIZED = LinearMethod()
_METHODS = {"int8": lambda: WeightOnly8Bit("int8", torch.int8), "fp8": lambda: Fp8WeightOnly("fp8", torch.float8_e4m3fn)}
_current: LinearMethod = UNQUANTIZED


def get_linear_method(quantization: str | None) -> LinearMethod:
    """None -> full precision; "int8" | "fp8" -> 8-bit weight-only. ValueError names the option."""
    if quantization is None:
        return UNQUANTIZED
    if quantization not in _METHODS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    return _METHODS[quantization]()


@contextmanager
def linear_quantization(quantization: str | None) -> Iterator[LinearMethod]:
    """Linear layers built inside the block use this quantization."""
    global _current
    previous, _current = _current, get_linear_method(quantization)
    try:
        yield _current
    finally:
        _current = previous


def current_linear_method() -> LinearMethod:
    return _current
