"""Programmatic dependent launch (Hopper and later): a decode step is a chain of a few hundred
small kernels, each of which, launched the ordinary way, starts only once its predecessor has
finished and the launch has gone through. Launched with the programmatic-serialization attribute
(`launch_pdl`), a kernel is launched while its predecessor still runs; its programs then wait
(`griddepcontrol.wait`) until the predecessor has completed and its writes are visible, so the
launch latency and the program start-up overlap the predecessor's tail.

Every kernel launched so calls `pdl_entry` first, in every program, before any memory access:
no read of a predecessor's output and no write to what a predecessor reads can move ahead of the
wait. The wait covers only the immediate predecessor, which is enough because a kernel completes
only after its own wait: the chain stays ordered. `pdl_entry` also lets the next kernel launch at
once (its programs wait in turn). Kernels that follow in the stream without the attribute (cuBLAS,
torch's own) start after a full completion, as always.

The engine turns it on for every decode-path kernel on GPUs of compute capability 9.0 and up
(EngineConfig.extra {"pdl": False} turns it off). On an H200 it took Llama-3-8B decode at batch 1
from 4.29 to 4.17 ms per step in bf16 and from 2.73 to 2.55 in int8; at TP4 (OPT-30B, BLOOM-176B
int8) it measured within run-to-run noise (benchmarks/RESULTS.md). Kernels called directly
(tests, tools) launch the ordinary way unless `set_pdl(True)`; Triton's interpreter (the CPU
tests) never uses it."""

from __future__ import annotations

import functools

import torch

from shardserve.kernels import _has_triton

_enabled = False
_gemm_trigger_late = False


def set_pdl(enabled: bool, gemm_trigger_late: bool = False) -> None:
    """Programmatic dependent launch on or off; gemm_trigger_late: the decode GEMMs let their
    successor launch only after their main loop, not at their start."""
    global _enabled, _gemm_trigger_late
    _enabled, _gemm_trigger_late = bool(enabled), bool(gemm_trigger_late)


def gemm_trigger_late() -> bool:
    return _gemm_trigger_late


@functools.lru_cache(maxsize=16)
def _supported(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


def pdl_args(x: torch.Tensor) -> dict:
    """The launch arguments of a kernel that takes `PDL: tl.constexpr`, for a launch on x's device."""
    on = _enabled and _has_gdc and x.is_cuda and _supported(x.device)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


_has_gdc = False
if _has_triton:
    import triton
    import triton.language as tl

    try:  # Triton >= 3.4; an older one launches every kernel the ordinary way
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

        _has_gdc = True
    except ImportError:
        pass

    @triton.jit
    def pdl_entry(PDL: tl.constexpr):
        """A kernel's first statement: wait for the predecessor, then let the successor launch."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()

    @triton.jit
    def pdl_wait(PDL: tl.constexpr):
        """`pdl_entry` without the successor's launch: for a kernel that lets it launch later."""
        if PDL:
            gdc_wait()

    @triton.jit
    def pdl_launch_dependents(PDL: tl.constexpr):
        if PDL:
            gdc_launch_dependents()
