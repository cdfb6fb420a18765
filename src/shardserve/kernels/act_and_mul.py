"""Input activations: the activation an MLP applies between its two matmuls, named as the second
matmul's `input_act` (layers/quant.py, kernels/tuned_gemm.py), which applies it as it reads x.

  "relu" | "gelu" (erf) | "gelu_tanh" | "silu"   act(x), same width
  "<act>_and_mul", e.g. "silu_and_mul"           x [T, 2 * inter] = [gate | up] -> act(gate) * up
                                                 [T, inter] (Llama-family MLPs)

`input_act_reference` is the definition (torch, the CPU path): the activation in float32 rounded
to x's dtype, and for the gated ones that rounded value times up, rounded again (HF rounds silu's
output before the product). `act_tile` is the same in Triton, on a tile: the decode GEMM kernels
(kernels/gemm_kernels.py) call it in their prologue, and `act_kernel` runs it on its own (as
`silu_and_mul`, what the unfused layers run for gated SiLU on GPUs, and before a GEMM config
that keeps the activation apart). Same float32 code in both, so a GEMM fed by `act_kernel` and
the GEMM that fuses `act_tile` agree bit for bit. Against torch, relu and gated SiLU's product
are exact, while silu, erf and tanh-gelu come from other float32 formulas (torch: its own exp /
erf / tanh): the activation then differs from torch's in the last bit of the activation dtype
now and then (a few ulps at most in GELU's negative tail, where torch's 1 + erf / 1 + tanh
cancels).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from shardserve.kernels import _has_triton, use_fused_kernels

if _has_triton:
    import triton
    import triton.language as tl

    from shardserve.kernels.pdl import pdl_args, pdl_entry

_TORCH_ACTS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}
INPUT_ACTS = (*_TORCH_ACTS, *(f"{a}_and_mul" for a in _TORCH_ACTS))
_BLOCK = 1024


def split_input_act(input_act: str | None) -> tuple[str, bool]:
    """input_act -> (activation, gated); None -> ("", False): no activation."""
    if input_act is None:
        return "", False
    if input_act not in INPUT_ACTS:
        raise ValueError(f"input_act must be None or one of {INPUT_ACTS}, got {input_act!r}")
    act = input_act.removesuffix("_and_mul")
    return act, act != input_act


def input_act_reference(x: torch.Tensor, input_act: str | None) -> torch.Tensor:
    """x [..., K] (gated: [..., 2 * K] = [gate | up]) -> [..., K] in x.dtype; None: x itself."""
    act, gated = split_input_act(input_act)
    if not act:
        return x
    if not gated:
        return _TORCH_ACTS[act](x)
    gate, up = x.chunk(2, dim=-1)
    return _TORCH_ACTS[act](gate) * up


def apply_input_act(x: torch.Tensor, input_act: str | None) -> torch.Tensor:
    """The activation as a step of its own, as the unfused layers run it: gated SiLU by
    `silu_and_mul` on a GPU, anything else by the torch reference."""
    if input_act == "silu_and_mul" and use_fused_kernels(x):
        return silu_and_mul(x)
    return input_act_reference(x, input_act)


if _has_triton:

    @triton.jit
    def act_tile(x, up, ACT: tl.constexpr, GATED: tl.constexpr):
        """x (and with GATED, up) in the activation dtype -> act(x) [* up] in that dtype: float32
        math, rounded where `input_act_reference` rounds (after act, and after the product)."""
        v = x.to(tl.float32)
        if ACT == "relu":
            a = tl.maximum(v, 0.0)
        elif ACT == "silu":
            a = v / (1.0 + tl.exp(-v))
        elif ACT == "gelu":
            a = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
        else:  # gelu_tanh: 0.5 v (1 + tanh(u)) = v * sigmoid(2u); Triton has no tanh, and this form
            # does not cancel in the negative tail.
            u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
            a = v / (1.0 + tl.exp(-2.0 * u))
        out = a.to(x.dtype)
        if GATED:  # the product of two half-precision values is exact in float32: one rounding
            out = (out.to(tl.float32) * up.to(tl.float32)).to(x.dtype)
        return out

    @triton.jit
    def _act_kernel(x_ptr, out_ptr, stride_x, stride_out, width, ACT: tl.constexpr, GATED: tl.constexpr,
                    BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl_entry(PDL)
        # One row, BLOCK output columns: out[row, c] = act(x[row, c]) (* x[row, width + c]).
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < width
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        up = x
        if GATED:
            up = tl.load(x_ptr + row * stride_x + width + cols, mask=mask, other=0.0)
        tl.store(out_ptr + row * stride_out + cols, act_tile(x, up, ACT, GATED), mask=mask)


def act_kernel(x: torch.Tensor, input_act: str) -> torch.Tensor:
    """`input_act_reference` in one Triton kernel, by `act_tile`: x [T, K] (gated: [T, 2 * K],
    unit stride along it) -> [T, K]."""
    act, gated = split_input_act(input_act)
    assert act and x.dim() == 2 and x.stride(1) == 1 and (not gated or x.shape[1] % 2 == 0)
    width = x.shape[1] // 2 if gated else x.shape[1]
    out = torch.empty((x.shape[0], width), dtype=x.dtype, device=x.device)
    if x.shape[0] and width:
        _act_kernel[(x.shape[0], triton.cdiv(width, _BLOCK))](
            x, out, x.stride(0), out.stride(0), width, ACT=act, GATED=gated, BLOCK=_BLOCK, num_warps=4, **pdl_args(x),
        )
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * inter] = [gate | up] -> silu(gate) * up [T, inter] (Triton)."""
    return act_kernel(x, "silu_and_mul")
