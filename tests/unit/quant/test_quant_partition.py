"""`shardserve partition --quantize`: an already-quantised pre-sharded checkpoint whose manifest
lists weight + scale, loaded without re-quantising, equal to quantising at load time."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.tp import as_rank
from shardserve import LLM, SamplingParams
from shardserve.cli import main as cli_main
from shardserve.layers import quant
from shardserve.models import create_model, load_model
from shardserve.models.config import ModelConfig
from shardserve.weights.fast_read import read_rank_file
from shardserve.weights.manifest import MANIFEST, file_digests

GREEDY = SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=0.0)


@pytest.fixture(scope="module")
def int8_tp2(tiny_checkpoint, tmp_path_factory):
    src = tiny_checkpoint("llama")
    out = tmp_path_factory.mktemp("quantized") / "int8-tp2"
    assert cli_main(["partition", "--model", str(src), "--tp", "2", "--quantize", "int8", "--out", str(out)]) == 0
    return src, out


def _params(path, rank: int, world: int, **kw) -> dict[str, torch.Tensor]:
    with as_rank(rank, world):
        model = load_model(ModelConfig.from_hf(path), path, torch.float32, "cpu", **kw)
    return dict(model.named_parameters())


def test_manifest_lists_8bit_weights_with_their_scales(int8_tp2):
    _, out = int8_tp2
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["quantization"] == "int8"
    tensors = manifest["tensors_rank0"]
    qkv = tensors["model.layers.0.self_attn.qkv_proj.weight"]
    assert qkv["dtype"] == "int8"
    assert qkv["quantization"] == {"scheme": "int8", "scale": "model.layers.0.self_attn.qkv_proj.weight_scale"}
    assert tensors[qkv["quantization"]["scale"]]["dtype"] == "float32"
    assert tensors["model.embed_tokens.weight"]["dtype"] == "float32"  # embeddings stay as they were
    # The untied LM head is 8-bit too: this rank's vocab rows, each with its scale.
    head = tensors["lm_head.weight"]
    assert head["dtype"] == "int8" and head["shape"] == [manifest["config"]["vocab_size"] // 2, qkv["shape"][1]]
    assert head["quantization"] == {"scheme": "int8", "scale": "lm_head.weight_scale"}
    for f in manifest["files"]:
        assert len(f["block_sha256"]) == -(-f["bytes"] // f["block_bytes"])


def test_loading_does_not_requantise_and_equals_load_time_quantisation(int8_tp2, monkeypatch):
    src, out = int8_tp2
    for rank in range(2):
        direct = _params(src, rank, 2, quantization="int8")
        with monkeypatch.context() as m:
            m.setattr(quant, "quantize_rows", lambda *a: pytest.fail("re-quantised a pre-sharded weight"))
            loaded = _params(out, rank, 2)
        assert loaded.keys() == direct.keys()
        for name, p in loaded.items():
            assert p.dtype == direct[name].dtype and torch.equal(_bytes(p), _bytes(direct[name])), name


def test_engine_on_quantised_checkpoint_equals_quantising_at_load(int8_tp2):
    src, out = int8_tp2
    prompts = ["The quick brown fox", "Once upon a time"]
    with LLM(str(src), dtype="fp32", tensor_parallel_size=2, quantization="int8") as direct:
        want = [o.token_ids for o in direct.generate(prompts, GREEDY)]
    with LLM(str(out), dtype="fp32", tensor_parallel_size=2) as presharded:
        assert [o.token_ids for o in presharded.generate(prompts, GREEDY)] == want


def test_other_quantization_than_the_checkpoints_is_a_value_error(int8_tp2, tiny_checkpoint, tmp_path):
    src, out = int8_tp2
    with pytest.raises(ValueError, match=r"quantization='fp8', but .* partitioned with quantization='int8'"):
        _params(out, 0, 2, quantization="fp8")
    plain = tmp_path / "plain"
    assert cli_main(["partition", "--model", str(src), "--tp", "1", "--out", str(plain)]) == 0
    with pytest.raises(ValueError, match="re-partition .* --quantize int8"):
        _params(plain, 0, 1, quantization="int8")


def test_fp8_round_trip(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("bloom")
    out = tmp_path / "fp8"
    assert cli_main(["partition", "--model", str(src), "--tp", "1", "--quantize", "fp8", "--out", str(out)]) == 0
    direct, loaded = _params(src, 0, 1, quantization="fp8"), _params(out, 0, 1)
    weight = "transformer.h.0.mlp.dense_h_to_4h.weight"
    assert loaded[weight].dtype == torch.float8_e4m3fn
    for name, p in loaded.items():
        assert p.dtype == direct[name].dtype and torch.equal(_bytes(p), _bytes(direct[name])), name


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """8-bit tensors compared as bytes (float8 has no equality on the CPU)."""
    return t.view(torch.uint8) if t.element_size() == 1 else t


def test_fast_reader_fills_a_model_like_safetensors(int8_tp2):
    """What a GPU rank runs (chunked reads checked against block hashes) into this rank's model:
    once with the manifest's hashes, once with 4 KiB blocks so tensors straddle chunks."""
    _, out = int8_tp2
    entry = json.loads((out / MANIFEST).read_text())["files"][1]
    path = out / entry["name"]
    want = _params(out, 1, 2)  # the CPU path: safetensors
    for hashes, block in [(entry["block_sha256"], entry["block_bytes"]), (file_digests(path, 4096)[1], 4096)]:
        with as_rank(1, 2):
            model = create_model(ModelConfig.from_hf(out), torch.float32, "int8")
        model.to_empty(device="cpu")
        params = dict(model.named_parameters())
        stats = read_rank_file(path, params, chunk_bytes=4 * 4096, threads=2, block_sha256=hashes, block_bytes=block)
        assert stats.bytes_read == entry["bytes"]
        assert all(torch.equal(_bytes(params[n]), _bytes(p)) for n, p in want.items())
