"""Our models vs transformers on the same tiny checkpoints: same logits, flat batch, chunked."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.forward import prefill_logits
from shardserve.models import load_model
from shardserve.models.config import ModelConfig

# Three prompts of different lengths in one flat batch (BOS = 1 first, like the tokenizer).
PROMPTS = [
    [1, 17, 301, 45, 260, 99, 7, 411, 23, 88, 150],
    [1, 480, 3],
    [1, *range(40, 500, 23)],
]

# (arch, config overrides): every arch, plus the other side of its tie_word_embeddings default.
CASES = [
    ("opt", {}),
    ("opt", {"tie_word_embeddings": False}),
    ("opt-postln", {}),
    ("opt-proj", {}),
    ("bloom", {}),
    ("bloom", {"tie_word_embeddings": False}),
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("llama-linear-rope", {}),
    ("mistral", {}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True}),
]


def _ids(case):
    arch, overrides = case
    return arch + "".join(f"-{k}={v}" for k, v in overrides.items())


@torch.no_grad()
def hf_logits(path, prompts, dtype=torch.float32) -> list[torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return [model(torch.tensor([p])).logits[0].float() for p in prompts]


def load_ours(path, dtype=torch.float32, load_format="auto"):
    return load_model(ModelConfig.from_hf(path), path, dtype, "cpu", load_format)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_logits_match_transformers(tiny_checkpoint, case):
    arch, overrides = case
    path = tiny_checkpoint(arch, **overrides)
    expected = hf_logits(path, PROMPTS)
    model = load_ours(path)
    for chunks in (1, 2):  # one flat prefill; then prefix cached and the rest fed after it
        for got, want in zip(prefill_logits(model, PROMPTS, chunks), expected, strict=True):
            assert got.dtype == torch.float32 and got.shape == want.shape
            assert (got - want).abs().max() <= 1e-4, f"chunks={chunks}"
    # Guard against a vacuous comparison: the logits really depend on the tokens.
    assert expected[0].std(-1).min() > 0.3


@pytest.mark.parametrize("arch", ["opt", "bloom", "llama"])
def test_bf16_load(tiny_checkpoint, arch):
    path = tiny_checkpoint(arch)
    model = load_ours(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    expected = hf_logits(path, PROMPTS)
    for got, want in zip(prefill_logits(model, PROMPTS), expected, strict=True):
        assert got.dtype == torch.float32
        # bf16 keeps ~3 significant digits through 2 layers: measured max error ~3% of the
        # largest logit, so 5% catches a wrong weight (which moves logits by their own scale).
        assert (got - want).abs().max() <= 0.05 * want.abs().max()


def test_half_precision_checkpoint_loads_as_fp32(tiny_checkpoint):
    """dtype is converted on the fly: a bf16 checkpoint into fp32 parameters, same numbers."""
    path = tiny_checkpoint("llama", dtype="bfloat16")
    assert ModelConfig.from_hf(path).torch_dtype == "bfloat16"
    model = load_ours(path, dtype=torch.float32)
    expected = hf_logits(path, PROMPTS, dtype=torch.float32)
    for got, want in zip(prefill_logits(model, PROMPTS), expected, strict=True):
        assert (got - want).abs().max() <= 1e-4
