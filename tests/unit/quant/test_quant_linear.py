"""INT8 / FP8 weight-only linear layers on the CPU: the quantisation step, every parallel linear
type at TP=1 and on 2 gloo ranks, against float32 with the bound derived in layer_cases."""

from __future__ import annotations

import pytest
import torch

from helpers.quant_layers import LAYERS, QDTYPES, all_cases, error_bound, run_case
from helpers.tp import run_tp
from shardserve.config import EngineConfig
from shardserve.kernels.gemm_kernels import kernel_applies
from shardserve.kernels.tuned_gemm import pick_config
from shardserve.kernels.weight_formats import QMAX, dequantize, linear_reference, quantize_rows
from shardserve.layers.quant import get_linear_method, linear_quantization
from shardserve.models import create_model
from shardserve.models.config import ModelConfig

gen = torch.Generator().manual_seed(0)


def _weights(rows=24, cols=200):
    # Rows spanning three orders of magnitude, plus one all-zero row.
    w = torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 0, rows)[:, None]
    w[5] = 0
    return w


def test_int8_rounding_is_within_half_a_step():
    w = _weights()
    q, scale = quantize_rows(w, torch.int8)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    step = w.abs().amax(dim=1) / 127
    assert torch.all((dequantize(q, scale, torch.float32) - w).abs() <= step[:, None] / 2 * (1 + 1e-6))
    nonzero = torch.arange(len(w)) != 5
    assert torch.all(q[nonzero].abs().amax(dim=1) == 127)  # the largest entry uses the full range
    assert torch.all(q[5] == 0)


def test_fp8_rounding_keeps_three_mantissa_bits():
    w = _weights()
    q, scale = quantize_rows(w, torch.float8_e4m3fn)
    err = (dequantize(q, scale, torch.float32) - w).abs()
    s = w.abs().amax(dim=1, keepdim=True) / 448
    assert torch.all(err <= w.abs() / 16 + s / 1024 + 1e-12)
    assert torch.isfinite(q.float()).all() and q.float().abs().max() == 448


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
def test_linear_matches_float32_within_the_bound(quantization):
    w, bias = _weights(40, 328), torch.randn(40, generator=gen)
    x = torch.randn(7, 328, generator=gen)
    q, scale = quantize_rows(w, QDTYPES[quantization])
    out = linear_reference(x, q, scale, bias)
    ref = x @ w.T + bias
    assert torch.all((out - ref).abs() <= error_bound(x, w, quantization))
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < (0.01 if quantization == "int8" else 0.05), rel  # quantised, but close


def _check(result: dict, kind: str) -> None:
    got_q, got_s = result["stored"]
    want_q, want_s = result["expected"]
    assert torch.equal(got_q, want_q), f"{kind}: 8-bit weight"
    assert torch.equal(got_s, want_s), f"{kind}: scales"
    err = (result["out"] - result["fp32"]).abs()
    assert torch.all(err <= result["bound"]), f"{kind}: error {(err / result['bound']).max():.2f} x the bound"
    assert err.max() > 0  # it did quantise


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_linear_type_single_rank(kind, quantization):
    _check(run_case(kind, quantization), kind)


def test_every_linear_type_on_two_ranks():
    """Column rows / row-parallel columns quantised per rank, gathered and all-reduced."""
    per_rank = run_tp(2, all_cases)
    names = [(kind, q) for kind in sorted(LAYERS) for q in ("int8", "fp8")]
    for rank_results in per_rank:
        for (kind, q), result in zip(names, rank_results, strict=True):
            _check(result, f"{kind}/{q}")
    # Row-parallel scales cover each rank's columns: the two ranks store different scales.
    row = names.index(("row", "int8"))
    assert not torch.equal(per_rank[0][row]["stored"][1], per_rank[1][row]["stored"][1])


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_linear_layers_and_an_untied_head_are_8bit_embeddings_and_norms_keep_the_model_dtype(tiny_checkpoint, tied):
    config = ModelConfig.from_hf(tiny_checkpoint("llama", tie_word_embeddings=tied))
    model = create_model(config, torch.bfloat16, "int8")
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    linear = [n for n in dtypes if n.endswith("proj.weight")] + ([] if tied else ["lm_head.weight"])
    assert len(linear) == 4 * config.num_layers + (not tied) and all(dtypes[n] == torch.int8 for n in linear)
    assert all(dtypes[n.removesuffix("weight") + "weight_scale"] == torch.float32 for n in linear)
    others = [n for n in dtypes if n not in linear and not n.endswith("weight_scale")]
    assert {dtypes[n] for n in others} == {torch.bfloat16}
    # A tied head is the embedding table (one parameter, looked up): never quantised.
    assert "model.embed_tokens.weight" in others and (model.lm_head is model.model.embed_tokens) == tied


def test_unsupported_options_are_value_errors_naming_them():
    with pytest.raises(ValueError, match=r"quantization must be one of .*'int4'"):
        get_linear_method("int4")
    with pytest.raises(ValueError, match="quantization"), linear_quantization("int4"):
        pass
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig(model="x", quantization="int4")
    with linear_quantization("int8"):
        layer = LAYERS["column"][0]()
    with pytest.raises(ValueError, match="quantization='int8' needs a floating-point checkpoint"):
        layer.weight.weight_loader(layer.weight, torch.ones(64, 48, dtype=torch.int8))


def test_cpu_runs_the_reference_and_the_heuristic_follows_the_h200_sweep():
    x, w = torch.randn(1, 64), torch.ones(8, 64, dtype=torch.int8)
    assert not kernel_applies(x, w)
    # Llama-3-8B at batch 1 on a 132-SM GPU: the fastest of a 12-tiling sweep on an H200 (block_n,
    # split_k), which the untuned fallback must reproduce.
    best = {(6144, 4096): (64, 4), (4096, 4096): (32, 1), (28672, 4096): (32, 1), (4096, 14336): (64, 4)}
    for (n, k), (block_n, split) in best.items():
        cfg = pick_config(1, n, k, 132)
        assert (cfg.kernel, cfg.block_m, cfg.block_n, cfg.block_k, cfg.split_k) == ("dot", 16, block_n, 256, split)
    assert pick_config(65, 4096, 4096, 132).kernel == "dequant"  # prefill: dequantise + cuBLAS
    assert QMAX[torch.int8] == 127
