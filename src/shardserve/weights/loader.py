"""The one checkpoint loader: HF safetensors (single or sharded) or pytorch_model.bin.

Driven by the model's parameters (each carries `weight_loader` and `shard_shapes`, see
shardserve.weights.params) and its name mapping (`base_model_prefix`, `packed_modules`).

Peak host memory: one tensor slice at a time. Safetensors are opened with `safe_open` and read
through `get_slice`, so a rank reads only the rows/columns it owns, in the checkpoint dtype; the
weight_loader copies that slice into the parameter on the device (converting the dtype on the
way) and drops it before the next tensor is read. So host memory beyond the model's own device
memory is bounded by the largest single rank slice (plus a same-sized dtype-converted copy when
the dtypes differ). A .bin file is memory-mapped (torch.load(mmap=True, weights_only=True)), so
its pages are read on demand and only the slices touched are paged in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from shardserve.errors import ModelLoadError
from shardserve.weights.manifest import MANIFEST, is_rank_file_name
from shardserve.weights.params import Loaded, shape_of

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def materialize(model: nn.Module, device: torch.device | str) -> None:
    """Replace the model's meta parameters by uninitialised ones on `device`; compute buffers.

    Parameter attributes (weight_loader, shard_shapes) are kept; derived buffers (rotary caches,
    ALiBi slopes) are recomputed on the device by each module's `init_buffers(device)`.
    """
    for module in model.modules():  # shared modules (tied embeddings) are visited once
        for name, param in module._parameters.items():
            if param is None:
                continue
            new = nn.Parameter(torch.empty_like(param, device=device), requires_grad=False)
            new.__dict__.update(param.__dict__)
            module._parameters[name] = new
        if hasattr(module, "init_buffers"):
            module.init_buffers(device)
    stale = [n for n, b in model.named_buffers() if b.is_meta]
    assert not stale, f"buffers without init_buffers(): {stale}"


def load_weights(model: nn.Module, model_dir: str | Path, load_format: str = "auto") -> None:
    """Fill every parameter of a materialised `model` from the checkpoint in `model_dir`."""
    params = dict(model.named_parameters())
    pending = {(name, shard) for name, p in params.items() for shard in p.shard_shapes}
    seen: dict[str, Path] = {}
    for file, name, loaded in iter_checkpoint(Path(model_dir), load_format):
        if name in seen:  # which copy would win depends on file order: neither can be trusted
            raise ModelLoadError(
                f"{model_dir}: tensor {name!r} is in both {seen[name].name} and {file.name}: "
                "remove the file that does not belong to this checkpoint"
            )
        seen[name] = file
        target = param_for(model, name)
        if target is None:
            continue
        param_name, shard_id = target
        param = params.get(param_name)
        if param is None or shard_id not in param.shard_shapes:
            raise ModelLoadError(f"{file}: unexpected tensor {name!r} ({type(model).__name__} has no such weight)")
        expected, got = param.shard_shapes[shard_id], shape_of(loaded)
        if tuple(expected) != got:
            raise ModelLoadError(f"{file}: tensor {name!r} has shape {list(got)}, expected {list(expected)}")
        try:
            param.weight_loader(param, loaded, shard_id)
        except Exception as e:  # a truncated or corrupt file surfaces when the slice is read
            raise ModelLoadError(f"{file}: cannot read tensor {name!r}: {e}") from e
        pending.discard((param_name, shard_id))
    if pending:
        missing = sorted(_checkpoint_name(model, n, s) for n, s in pending)
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelLoadError(f"{model_dir}: checkpoint is missing tensor(s) {missing[:5]}{more}")


def param_for(model: nn.Module, name: str) -> tuple[str, object] | None:
    """Checkpoint tensor name -> (parameter name, shard id), or None for tensors we do not use.

    Public: the benchmark maps the Accelerate baseline's HF names onto ours with it."""
    if name.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints saved
        return None
    if name == "lm_head.weight" and model.config.tie_word_embeddings:
        return None  # tied: the embedding is the head
    prefix = model.base_model_prefix + "."
    if not name.startswith((prefix, "lm_head.")):
        name = prefix + name  # original OPT/BLOOM checkpoints omit the base model prefix
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in model.packed_modules:
            parts[i], shard_id = model.packed_modules[part]
            return ".".join(parts), shard_id
    return name, None


def _checkpoint_name(model: nn.Module, param_name: str, shard_id) -> str:
    """The HF tensor name a missing (parameter, shard) would have come from (for messages)."""
    if shard_id is None:
        return param_name
    parts = param_name.split(".")
    for ckpt_part, (ours, sid) in model.packed_modules.items():
        if sid == shard_id and ours in parts:
            parts[parts.index(ours)] = ckpt_part
    return ".".join(parts)


def checkpoint_files(model_dir: Path, load_format: str = "auto") -> list[Path]:
    """The weight files to read: safetensors preferred, pytorch_model.bin as the fallback."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: model directory not found")
    if load_format not in ("auto", "safetensors", "pt"):
        raise ValueError(f"load_format must be auto, safetensors or pt here, got {load_format!r}")
    candidates = []
    if load_format in ("auto", "safetensors"):
        candidates.append((SAFETENSORS_INDEX, "*.safetensors"))
    if load_format in ("auto", "pt"):
        candidates.append((BIN_INDEX, "pytorch_model*.bin"))
    for index, pattern in candidates:
        if (model_dir / index).is_file():
            return _files_from_index(model_dir / index)
        files = sorted(model_dir.glob(pattern))
        if files:
            _refuse_unfinished_partition(model_dir, files)
            return files
    raise ModelLoadError(
        f"{model_dir}: no weights file found for load_format={load_format!r} (looked for "
        f"*.safetensors, {SAFETENSORS_INDEX}, pytorch_model.bin, {BIN_INDEX})"
    )


def _refuse_unfinished_partition(model_dir: Path, files: list[Path]) -> None:
    """Rank files without their manifest are what a `shardserve partition` run that was killed
    leaves: read as a Hugging Face checkpoint they fail on some tensor's name or shape, with a
    message that does not say why."""
    if not (model_dir / MANIFEST).is_file() and any(is_rank_file_name(f.name) for f in files):
        raise ModelLoadError(
            f"{model_dir}: holds rank files of `shardserve partition` but no {MANIFEST}: the "
            "partition did not finish; run it again into an empty directory"
        )


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{index}: not a valid checkpoint index: {e!r}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(f"{index}: weight_map must map tensor names to file names")
    names = sorted(set(weight_map.values()))
    for name in names:  # a shard outside the checkpoint would load weights it does not hold
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelLoadError(f"{index}: shard {name!r} is outside the model directory")
    files = [index.parent / n for n in names]
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{index}: lists shard {f.name}, which does not exist")
    return files


def iter_checkpoint(model_dir: Path, load_format: str = "auto") -> Iterator[tuple[Path, str, Loaded]]:
    """(file, tensor name, lazy slice or mmapped tensor) for every tensor of the checkpoint."""
    for file in checkpoint_files(model_dir, load_format):
        if file.suffix == ".safetensors":
            yield from _iter_safetensors(file)
        else:
            yield from _iter_bin(file)


def _iter_safetensors(file: Path) -> Iterator[tuple[Path, str, Loaded]]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError: bad header, truncated file
        raise ModelLoadError(f"{file}: not a readable safetensors file ({e})") from None
    with handle as f:
        for name in f.keys():
            yield file, name, f.get_slice(name)


def _iter_bin(file: Path) -> Iterator[tuple[Path, str, Loaded]]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ModelLoadError(f"{file}: not a readable PyTorch checkpoint ({e})") from None
    for name, tensor in state.items():
        yield file, name, tensor
