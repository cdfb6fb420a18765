"""Random linear cases shared by the kernel tests on the GPU (tests/gpu) and in Triton's CPU
interpreter (tests/unit/quant): the tuned path against its float32 reference, for 8-bit weights
(qdtype int8 / float8_e4m3fn, with scales) and 16-bit ones (qdtype None: the weight in the
activation dtype, no scale)."""

from __future__ import annotations

import torch

from shardserve.kernels.gemm_kernels import CUBLAS, DEQUANT, KernelConfig
from shardserve.kernels.tuned_gemm import tuned_linear
from shardserve.kernels.weight_formats import linear_reference, quantize_rows

# (M activation rows, N outputs, K inputs): odd sizes cross every tile edge; the last ones are
# Llama-3-8B's o_proj and a 2-row slice of its down_proj at decode batch sizes.
SHAPES = [(1, 200, 328), (3, 64, 64), (16, 130, 520), (17, 96, 256), (64, 72, 200), (1, 4096, 4096), (4, 512, 14336)]
SMALL_SHAPES = SHAPES[:5]
# Forced tilings: no split, split-K with a ragged last split, BLOCK_M 32 over a 17-row batch, and
# the swapped dot (weights on the MMA's tall side) unsplit and split.
CONFIGS = [KernelConfig(16, 64, 64, 1), KernelConfig(16, 32, 64, 3), KernelConfig(32, 64, 128, 2, num_stages=2),
           KernelConfig(16, 64, 64, 1, swap_ab=True), KernelConfig(16, 128, 32, 3, swap_ab=True)]
# The other paths (tests/gpu; the interpreter runs its own small set): the GEMV kernel over one row
# per program and over two with a ragged split, and dequantise + matmul.
OTHER_PATHS = [KernelConfig(1, 32, 64, 1, kernel="gemv"), KernelConfig(2, 16, 128, 3, num_warps=8, kernel="gemv"),
               DEQUANT]
# 16-bit weights: the GEMV paths above, a 16-wide dot tile with a ragged split, and cuBLAS.
DENSE_PATHS = [*OTHER_PATHS[:2], KernelConfig(16, 16, 128, 3), CUBLAS]

# The interpreter tests' own small set (tests/unit/quant): a small odd shape, neither a multiple of
# any block, and GEMV tilings over it; tolerances per activation dtype; Llama-3-8B's linear shapes.
INTERP_SHAPE = (50, 100)  # (N, K)
INTERP_GEMV = [
    KernelConfig(1, 16, 32, 1, kernel="gemv"),
    KernelConfig(2, 16, 64, 2, kernel="gemv"),  # split K in two
    KernelConfig(4, 32, 32, 3, num_warps=8, kernel="gemv"),  # ragged split: the third has no K left
]
TOL = {torch.float16: 1.5e-3, torch.bfloat16: 8e-3}
LLAMA8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def make_case(m: int, n: int, k: int, qdtype: torch.dtype | None, dtype: torch.dtype, device, bias: bool = True,
              seed: int = 0, strided: bool = False):
    """(x [m, k], weight [n, k], scale [n] | None, bias [n] | None) on `device`; x may be a strided
    view. qdtype None: a 16-bit weight in `dtype` and no scale."""
    gen = torch.Generator().manual_seed(seed)
    # Rows of different magnitudes, so a scale applied to the wrong row shows.
    w = torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen).add(0.1)
    qweight, scale = (w.to(dtype), None) if qdtype is None else quantize_rows(w, qdtype)
    x = torch.randn(m, 2 * k if strided else k, generator=gen)[:, :k]
    b = torch.randn(n, generator=gen) if bias else None
    to = lambda t, dt=None: None if t is None else t.to(device=device, dtype=dt or t.dtype)  # noqa: E731
    return to(x, dtype), to(qweight), to(scale), to(b, dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


def check_kernel(m, n, k, qdtype, dtype, device, config: KernelConfig | None = None, tol: float = 3e-3, **kw) -> float:
    """The kernel's output vs the reference summed in float32 (the kernel rounds once, to dtype);
    qdtype None: a 16-bit weight."""
    x, qweight, scale, bias = make_case(m, n, k, qdtype, dtype, device, **kw)
    out = tuned_linear(x, qweight, scale, bias, config=config)
    assert out.shape == (m, n) and out.dtype == dtype
    ref = linear_reference(x.float(), qweight, scale, None if bias is None else bias.float())
    err = relative_error(out, ref)
    assert err < tol, f"{(m, n, k, qdtype, dtype, config)}: relative error {err:.2e} >= {tol:.0e}"
    return err
