"""Broken checkpoints fail with a ModelLoadError that names the file and the tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.checkpoints import copy_checkpoint
from shardserve.errors import ModelLoadError
from shardserve.models import create_model, load_model
from shardserve.models.config import ModelConfig


@pytest.fixture
def llama_copy(tiny_checkpoint, tmp_path):
    """A writable copy of the tiny llama checkpoint (the cached one is shared)."""
    return copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "llama")


def _load(path):
    return load_model(ModelConfig.from_hf(path), path, torch.float32, "cpu")


def _rewrite(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_no_weights_file(llama_copy):
    (llama_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=rf"{llama_copy}: no weights file found"):
        _load(llama_copy)


def test_truncated_safetensors(llama_copy):
    file = llama_copy / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=rf"{file}: not a readable safetensors file"):
        _load(llama_copy)


def test_corrupt_safetensors_header(llama_copy):
    file = llama_copy / "model.safetensors"
    file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=rf"{file}: not a readable safetensors file"):
        _load(llama_copy)


def test_missing_tensor_names_the_checkpoint_name(llama_copy):
    # k_proj is packed into our qkv_proj: the message still uses the checkpoint's name.
    _rewrite(llama_copy, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"missing tensor\(s\) \['model\.layers\.1\.self_attn\.k_proj\.weight'\]"):
        _load(llama_copy)


def test_shape_mismatch(llama_copy):
    _rewrite(llama_copy, lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \[65\], expected \[64\]"):
        _load(llama_copy)


def test_unexpected_tensor(llama_copy):
    _rewrite(llama_copy, lambda t: t.update({"model.layers.0.mlp.extra_proj.weight": torch.ones(2, 2)}))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mlp\.extra_proj\.weight'"):
        _load(llama_copy)


def test_index_listing_a_missing_shard(tiny_checkpoint, tmp_path):
    path = copy_checkpoint(tiny_checkpoint("llama", sharded=True), tmp_path / "sharded")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (path / victim).unlink()
    with pytest.raises(ModelLoadError, match=rf"index\.json: lists shard {victim}, which does not exist"):
        _load(path)


def test_corrupt_bin(tiny_checkpoint, tmp_path):
    path = copy_checkpoint(tiny_checkpoint("opt", format="bin"), tmp_path / "bin")
    (path / "pytorch_model.bin").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin: not a readable PyTorch checkpoint"):
        _load(path)


def test_create_model_rejects_unknown_architecture(tiny_checkpoint):
    config = ModelConfig.from_hf(tiny_checkpoint("llama"))
    unknown = type(config)(**{**config.__dict__, "architecture": "GPT2LMHeadModel"})
    with pytest.raises(ModelLoadError, match=r"'GPT2LMHeadModel'.*engine=Accelerate"):
        create_model(unknown)
