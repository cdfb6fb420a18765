"""Pre-sharded checkpoints: one safetensors file per tensor-parallel rank plus a manifest.

Layout of a directory written by `shardserve partition`:
  shardserve-manifest.json   format version, architecture, HF config, tp size, dtype, and for
                             every rank file its byte size and sha256; per-tensor dtype/shape,
                             with quantized weights described as (int8|fp8 weight, scale) pairs
  rank-00000-of-00004.safetensors ...   each rank's parameters, named as in our models
  config.json, tokenizer files           copied, so the directory is a model dir on its own

Loading reads the rank's own file straight into its parameters: no slicing, no name mapping.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from shardserve.errors import ModelLoadError

MANIFEST = "shardserve-manifest.json"
FORMAT = "shardserve-presharded"
FORMAT_VERSION = 1


def rank_file_name(rank: int, tp_size: int) -> str:
    return f"rank-{rank:05d}-of-{tp_size:05d}.safetensors"


def is_presharded(model_dir: str | Path) -> bool:
    return (Path(model_dir) / MANIFEST).is_file()


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable manifest ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} "
            f"is not {FORMAT!r} version {FORMAT_VERSION}"
        )
    return manifest


def sha256_of(path: Path, chunk: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def load_presharded(model: nn.Module, model_dir: str | Path, rank: int, tp_size: int, verify: bool = True) -> None:
    """Fill a materialised model (this rank's shapes) from its rank file."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest["tp_size"] != tp_size:
        raise ModelLoadError(
            f"{model_dir} was partitioned for tensor_parallel_degree={manifest['tp_size']}, but the "
            f"engine runs {tp_size} ranks: use degree {manifest['tp_size']} or re-partition the "
            f"original checkpoint with `shardserve partition --tp {tp_size}`"
        )
    path = verify_rank_file(model_dir, manifest["files"][rank], check_hash=verify)
    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt", device=str(next(iter(params.values())).device)) as f:
        names = set(f.keys())
        missing = sorted(set(params) - names)
        if missing:
            raise ModelLoadError(f"{path}: missing tensor(s) {missing[:5]}")
        for name in names:
            if name not in params:
                raise ModelLoadError(f"{path}: unexpected tensor {name!r}")
            tensor = f.get_tensor(name)
            if tensor.shape != params[name].shape:
                raise ModelLoadError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, expected {list(params[name].shape)}")
            params[name].data.copy_(tensor)


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
