"""Programmatic dependent launch (Hopper and later): a decode step is a chain of a few hundred
small kernels, each of which, launched the ordinary way, starts only once its predecessor has
finished and the launch has gone through. Launched with the programmatic-serialization attribute
(`launch_pdl`), a kernel is launched once every program of its predecessor has let it
(`griddepcontrol.launch_dependents`); its programs then wait (`griddepcontrol.wait`) until the
predecessor has completed and its writes are visible, so the launch latency and the program
start-up overlap the predecessor's tail.

Every kernel launched so calls `pdl_entry` (or `pdl_wait`) first, in every program, before any
memory access: no read of a predecessor's output and no write to what a predecessor reads can
move ahead of the wait. (The CUDA int8 GEMM, kernels/int8_mma.py, launched by
kernels/cuda_launch.py, loads its first weights before its wait: no kernel of a step writes
them.) The wait covers only the immediate predecessor, which is enough because a kernel
completes only after its own wait: the chain stays ordered. Kernels that follow in the
stream without the attribute (cuBLAS, torch's own) start after a full completion, as always.

Where a kernel lets its successor launch matters. The small kernels do it at once (`pdl_entry`).
The decode GEMMs do it only after their main loop (`pdl_wait` first, `pdl_launch_dependents`
after the loop). A successor let in at the GEMM's start places its waiting programs on whatever
SM slots the GEMM leaves free; our reading of the figures below (not profiled) is that a GEMM
after a GEMM then starts with its programs unevenly spread and runs as long as its most crowded
SM. Back to back on an H200 (benchmarks/pdl_chain.py, us per call): BLOOM-176B TP4 fc1 int8
62.3 without PDL, 81.8 let in at the start, 62.0 after the loop; OPT-30B TP4 qkv fp16 20.6 /
24.7 / 20.0.

The engine turns it on for every decode-path kernel on GPUs of compute capability 9.0 and up
(EngineConfig.extra {"pdl": False} turns it off). With the GEMMs' late trigger, on an H200,
Llama-3-8B bf16 decode at batch 1 took 4.05 ms per step against 4.32 with the trigger at the
start, and OPT-30B fp16 at TP4 5.41 against 5.63 (benchmarks/RESULTS.md). Kernels called
directly (tests, tools) launch the ordinary way unless `set_pdl(True)`; Triton's interpreter (the
CPU tests) never uses it."""

from __future__ import annotations

import functools

import torch

from shardserve.kernels import _has_triton

_enabled = False


def set_pdl(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


@functools.lru_cache(maxsize=16)
def _supported(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


def pdl_on(x: torch.Tensor) -> bool:
    """Whether a kernel on x's device launches so (CUDA C kernels: kernels/cuda_launch.py)."""
    return _enabled and x.is_cuda and _supported(x.device)


def pdl_args(x: torch.Tensor) -> dict:
    """The launch arguments of a kernel that takes `PDL: tl.constexpr`, for a launch on x's device."""
    return {"PDL": True, "launch_pdl": True} if _has_gdc and pdl_on(x) else {"PDL": False}


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
