"""What the machine can do, measured in the same run as the benchmark it scales.

Bandwidth utilisation is only meaningful against the memory bandwidth this GPU reaches here
(not the datasheet's), so the benchmark measures a large device-to-device copy first.
"""

from __future__ import annotations

import platform

import torch


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30, iters: int = 10) -> float:
    """Bytes per second of a large copy, counting bytes read plus bytes written."""
    if device.type != "cuda":
        nbytes, iters = 64 << 20, 3  # CPU: just a rough figure, kept quick for tests
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)  # random, not zeros
    dst = torch.empty_like(src)
    dst.copy_(src)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(iters):
            dst.copy_(src)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        import time

        t0 = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src)
        seconds = time.perf_counter() - t0
    return 2 * nbytes * iters / seconds


def describe(devices: list[torch.device]) -> dict:
    """GPU names and software versions, for the report."""
    info = {"torch": torch.__version__, "host": platform.node()}
    if devices[0].type == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(d) for d in devices]
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(devices[0]).total_memory / 2**30, 1)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["gpus"] = []
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info
