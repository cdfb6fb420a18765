"""Write a pre-sharded checkpoint: each rank's slices in their own file (see presharded.py).

Peak host memory: one rank's slice of the model at a time (it is loaded on the CPU, written,
and dropped before the next rank), plus one tensor slice while that rank is read. With
--quantize the linear weights are quantised as they are read (layers/quant.py), so a rank's
slice is held in 8 bits, with its per-channel scales.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from shardserve.config import canonical_dtype, torch_dtype
from shardserve.parallel.state import ParallelInfo, get_parallel_info, set_parallel_info
from shardserve.storage.disk import output_dir_base
from shardserve.weights.manifest import (
    BLOCK_BYTES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    file_digests,
    is_presharded,
    rank_file_name,
)
from shardserve.weights.presharded import tensor_entries

logger = logging.getLogger(__name__)

_NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", MANIFEST}


def partition(
    model_dir: str | Path, out_dir: str | Path, tp_size: int, dtype: str = "auto", quantization: str | None = None
) -> Path:
    """Partition the HF checkpoint in `model_dir` for `tp_size` ranks into `out_dir`;
    quantization "int8" | "fp8" stores the linear weights quantised (weight + weight_scale).

    The manifest is written last, so a directory without one is never taken as complete.
    """

    from shardserve.models.config import ModelConfig
    from shardserve.storage.uri import local_model_dir

    model_dir, out_dir = local_model_dir(str(model_dir), "partition"), Path(out_dir)
    if is_presharded(model_dir):
        raise ValueError(f"{model_dir} is already pre-sharded; partition the original HF checkpoint")
    if tp_size < 1:
        raise ValueError(f"--tp must be >= 1, got {tp_size}")
    _, first_missing = output_dir_base(out_dir, "--out")  # also: what a failed run removes
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"output directory {out_dir} is not empty")
    from shardserve.layers.quant import get_linear_method

    get_linear_method(quantization)  # ValueError naming the option, before any work
    config = ModelConfig.from_hf(model_dir)
    weights_dtype = torch_dtype(dtype if canonical_dtype(dtype) != "auto" else (config.torch_dtype or "float32"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        _write(config, model_dir, out_dir, tp_size, weights_dtype, quantization)
    except BaseException:  # the directory was new or empty: leave it so, never half-written
        _undo_output(out_dir, first_missing)
        raise
    return out_dir


def _undo_output(out_dir: Path, first_missing: Path | None) -> None:
    """Empty `out_dir`, and remove the directories this run created (from `first_missing` down)."""
    if first_missing is not None:
        shutil.rmtree(first_missing, ignore_errors=True)
        return
    for item in out_dir.iterdir():  # it existed and was empty: keep it, emptied
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def _write(config, model_dir: Path, out_dir: Path, tp_size: int, weights_dtype, quantization: str | None) -> None:
    """partition's work: the rank files, the other files of the checkpoint, then the manifest."""
    from safetensors.torch import save_file

    from shardserve.models import load_model

    started = time.perf_counter()
    files = []
    tensors: dict[str, dict] = {}
    previous = get_parallel_info()
    try:
        for rank in range(tp_size):
            set_parallel_info(ParallelInfo(rank=rank, world_size=tp_size))
            model = load_model(config, model_dir, weights_dtype, "cpu", quantization=quantization)
            state = {n: p.data.contiguous() for n, p in model.named_parameters()}
            path = out_dir / rank_file_name(rank, tp_size)
            save_file(state, str(path), metadata={"format": FORMAT, "rank": str(rank), "tp_size": str(tp_size)})
            digest, blocks = file_digests(path, BLOCK_BYTES)
            files.append({"rank": rank, "name": path.name, "bytes": path.stat().st_size, "sha256": digest,
                          "block_bytes": BLOCK_BYTES, "block_sha256": blocks})
            if rank == 0:
                tensors = tensor_entries(state)
            del model, state
            logger.info("wrote %s (%.2f GB)", path.name, files[-1]["bytes"] / 1e9)
    finally:
        set_parallel_info(previous)

    hf_config = json.loads((model_dir / "config.json").read_text())
    hf_config["torch_dtype"] = str(weights_dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    for item in model_dir.iterdir():
        if item.is_file() and item.name not in _NOT_COPIED and item.suffix not in (".safetensors", ".bin", ".pt"):
            shutil.copy2(item, out_dir / item.name)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": config.architecture,
        "config": hf_config,
        "tp_size": tp_size,
        "dtype": hf_config["torch_dtype"],
        "quantization": quantization,
        "files": files,
        "tensors_rank0": tensors,
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out_dir / MANIFEST)
    logger.info("partitioned %s for tp=%d in %.1f s -> %s", model_dir, tp_size, time.perf_counter() - started, out_dir)

