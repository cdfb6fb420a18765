"""The tiny checkpoints themselves: loadable by transformers offline, non-degenerate logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.checkpoints import ARCHS, EOS_ID, VOCAB_SIZE


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_checkpoint_loads_in_transformers(tiny_checkpoint, arch):
    path = tiny_checkpoint(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.eos_token_id == EOS_ID
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer("Hello, world! The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
    assert logits.shape[-1] == VOCAB_SIZE
    # Random weights with a large init std: logits spread out and vary with the position.
    assert logits.std(-1).min() > 0.3
    assert len(set(logits.argmax(-1).tolist())) > 1


def test_sharded_and_bin_variants(tiny_checkpoint):
    sharded = tiny_checkpoint("llama", sharded=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert (tiny_checkpoint("opt", format="bin") / "pytorch_model.bin").is_file()
