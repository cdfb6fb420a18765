"""Pre-sharded checkpoints: one safetensors file per tensor-parallel rank plus a manifest.

Layout of a directory written by `shardserve partition` (the manifest's format and digests live
in weights/manifest.py):
  shardserve-manifest.json   format version, architecture, HF config, tp size, dtype,
                             quantization (null | int8 | fp8), and for every rank file its byte
                             size, sha256 and the sha256 of each BLOCK_BYTES block (checked while
                             the file is read); per-tensor dtype/shape, with quantized weights
                             described as (int8|fp8 weight, scale) pairs
  rank-00000-of-00004.safetensors ...   each rank's parameters, named as in our models
  config.json, tokenizer files           copied, so the directory is a model dir on its own

Loading reads the rank's own file straight into its parameters: no slicing, no name mapping
(weights/fast_read.py: large overlapped reads on GPUs, safetensors on CPUs). An 8-bit
checkpoint is loaded as it is, into a model built with the manifest's quantization.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from shardserve.errors import ModelLoadError
from shardserve.weights.fast_read import LoadStats, read_rank_file, read_with_safetensors
from shardserve.weights.manifest import MANIFEST, is_presharded, read_manifest, sha256_of


def reads_presharded(load_format: str, model_dir: str | Path | None) -> bool:
    """Whether a load of `model_dir` in `load_format` reads a pre-sharded checkpoint ("auto"
    recognises one by its manifest)."""
    return load_format == "presharded" or (load_format == "auto" and model_dir is not None
                                           and is_presharded(model_dir))


def check_presharded(model_dir: str | Path, tp_size: int, quantization: str | None) -> None:
    """What the engine checks before it starts its ranks, so that a mismatch fails at once with
    one clear error: the manifest's format version, its degree, its quantization."""
    manifest = read_manifest(model_dir)
    _require_degree(manifest, model_dir, tp_size)
    presharded_quantization(model_dir, quantization, manifest)


def _require_degree(manifest: dict, model_dir: str | Path, tp_size: int) -> None:
    if manifest["tp_size"] != tp_size:
        raise ModelLoadError(
            f"{model_dir} was partitioned for tensor_parallel_degree={manifest['tp_size']}, but the "
            f"engine runs {tp_size} ranks: use degree {manifest['tp_size']} or re-partition the "
            f"original checkpoint with `shardserve partition --tp {tp_size}`"
        )


def presharded_quantization(model_dir: str | Path, requested: str | None, manifest: dict | None = None) -> str | None:
    """The quantization a pre-sharded checkpoint was written with; `requested` (None = take
    the checkpoint's) must agree: 8-bit weights are not converted back or re-quantised."""
    stored = (manifest or read_manifest(model_dir)).get("quantization")
    if requested is not None and requested != stored:
        raise ValueError(
            f"quantization={requested!r}, but {model_dir} was partitioned with quantization={stored!r}: "
            f"drop the option or re-partition the original checkpoint with --quantize {requested}"
        )
    return stored


def verify_rank_file(model_dir: Path, entry: dict, check_hash: bool = True) -> Path:
    """Size always, sha256 unless disabled; raises ModelLoadError naming the file."""
    path = model_dir / entry["name"]
    if not path.is_file():
        raise ModelLoadError(f"{path}: rank file listed in {MANIFEST} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ModelLoadError(f"{path}: {size} bytes, the manifest says {entry['bytes']}: file is damaged")
    if check_hash and sha256_of(path) != entry["sha256"]:
        raise ModelLoadError(f"{path}: sha256 differs from the manifest: file is damaged")
    return path


def load_presharded(
    model: nn.Module, model_dir: str | Path, rank: int, tp_size: int, verify: bool = True,
    direct: bool = False, stats: LoadStats | None = None,
) -> None:
    """Fill a materialised model (this rank's shapes) from its rank file.

    GPU: chunked overlapped reads (O_DIRECT if `direct`), verified block by block when the
    manifest has block hashes (else a whole-file sha256 first). CPU: safetensors, after the
    whole-file sha256.
    """
    model_dir = Path(model_dir)
    stats = stats if stats is not None else LoadStats()
    manifest = read_manifest(model_dir)
    _require_degree(manifest, model_dir, tp_size)
    entry = manifest["files"][rank]
    params = dict(model.named_parameters())
    chunked = next(iter(params.values())).device.type == "cuda"
    blocks = entry.get("block_sha256") if verify and chunked else None
    started = time.perf_counter()
    path = verify_rank_file(model_dir, entry, check_hash=verify and blocks is None)
    stats.verify_s += time.perf_counter() - started
    if chunked:
        read_rank_file(path, params, block_sha256=blocks, block_bytes=entry.get("block_bytes"), direct=direct,
                       stats=stats)
    else:
        read_with_safetensors(path, params, stats)


def tensor_entries(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per-tensor description for the manifest; 8-bit weights name their scale tensor."""
    entries = {}
    for name, t in state.items():
        entry = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        scale = name.removesuffix("weight") + "weight_scale"
        if t.dtype in (torch.int8, torch.float8_e4m3fn) and scale in state:
            entry["quantization"] = {"scheme": "int8" if t.dtype == torch.int8 else "fp8", "scale": scale}
        entries[name] = entry
    return entries
