"""Models with the residual adds folded into the norms: same logits as transformers with the
fused norm kernels on (through Triton's interpreter), and the expected number of fused calls.

The torch path of the same models is covered by test_model_parity.py; here also the layouts it
has no case for (BLOOM's residual after the layer norm, pre-LN OPT without a final norm).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import shardserve.kernels.layer_norm as layer_norm_kernels
import shardserve.kernels.rms_norm as rms_norm_kernels
import shardserve.layers.norm as norm_module
from helpers.forward import prefill_logits
from helpers.markers import needs_interpreter
from shardserve.models import load_model
from shardserve.models.config import ModelConfig

PROMPTS = [[1, 17, 301, 45, 260, 99, 7, 411, 23, 88, 150], [1, 480, 3], [1, *range(40, 500, 37)]]

# (arch, config overrides, expected (plain norm calls, fused add + norm calls)) for 2 layers.
# Pre-LN: one plain norm (the first layer's), then every add is fused (2 per layer, the last
# into the final norm); BLOOM adds its embedding norm; post-LN OPT fuses both adds of a layer.
CASES = [
    ("llama", {}, (1, 4)),
    ("mistral", {}, (1, 4)),
    ("qwen2", {}, (1, 4)),
    ("opt", {}, (1, 4)),
    ("opt-proj", {}, (1, 4)),
    ("opt-postln", {}, (0, 4)),
    ("opt", {"_remove_final_layer_norm": True}, (1, 3)),
    ("bloom", {}, (2, 4)),
    ("bloom", {"apply_residual_connection_post_layernorm": True}, (2, 4)),
]


def _ids(case):
    arch, overrides, _ = case
    return arch + "".join(f"-{k}={v}" for k, v in overrides.items())


@torch.no_grad()
def _hf_logits(path) -> list[torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return [model(torch.tensor([p])).logits[0].float() for p in PROMPTS]


def _count_calls(monkeypatch, module, name, counts):
    fn = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_interpreter)], ids=["torch", "fused"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_logits_match_transformers(tiny_checkpoint, monkeypatch, case, fused):
    arch, overrides, (plain, adds) = case
    path = tiny_checkpoint(arch, **overrides)
    expected = _hf_logits(path)
    model = load_model(ModelConfig.from_hf(path), path, torch.float32, "cpu", "auto")
    counts: dict[str, int] = {}
    if fused:
        # Only the norms take the Triton path (CPU tensors, interpreter); other layers stay torch.
        monkeypatch.setattr(norm_module, "use_fused_kernels", lambda x: True)
        for module, names in ((rms_norm_kernels, ("rms_norm", "fused_add_rms_norm")),
                              (layer_norm_kernels, ("layer_norm", "fused_add_layer_norm"))):
            for name in names:
                _count_calls(monkeypatch, module, name, counts)
    got = prefill_logits(model, PROMPTS)
    for g, want in zip(got, expected, strict=True):
        assert (g - want).abs().max() <= 1e-4
    assert expected[0].std(-1).min() > 0.3  # not a vacuous comparison
    if fused:
        plain_calls = counts.get("rms_norm", 0) + counts.get("layer_norm", 0)
        fused_calls = counts.get("fused_add_rms_norm", 0) + counts.get("fused_add_layer_norm", 0)
        assert (plain_calls, fused_calls) == (plain, adds)
