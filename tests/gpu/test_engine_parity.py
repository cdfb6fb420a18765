"""The whole GPU fast path (Triton attention, fused kernels, CUDA graphs) vs transformers.

Tiny checkpoints of each architecture family with random weights: per-position logits cosine and
greedy tokens against transformers (the benchmark's own check), and CUDA-graph decode against
eager decode on a batch whose size needs a padded bucket.
"""

from __future__ import annotations

import pytest
import torch

from shardserve import LLM, SamplingParams
from shardserve.bench.latency import BenchConfig, run_bench


@pytest.mark.parametrize("arch,dtype", [("llama", "bf16"), ("qwen2", "bf16"), ("opt", "fp16"), ("bloom", "bf16")])
def test_logits_match_transformers(tiny_checkpoint, tmp_path, arch, dtype):
    path = tiny_checkpoint(arch)
    cfg = BenchConfig(model=str(path), random_weights=True, batch=2, prompt_len=20, new_tokens=4, reps=1,
                      baseline_reps=1, engines=("tp",), dtype=dtype, check_tokens=12, out_dir=tmp_path)
    _, context = run_bench(cfg)
    check = context["correctness"]["tp"]
    assert check["passed"], check
    assert check["greedy_agree"] >= 4, check


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_cuda_graph_decode_equals_eager(tiny_checkpoint, arch):
    """Graphs or eager, steps overlapped (placeholders filled on the device) or not: one output."""
    path = str(tiny_checkpoint(arch))
    prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 53))]  # 3 sequences: bucket 4, one padding row
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for n in (24, 9, 17)]
    outs = {}
    for eager in (False, True):
        for overlap in (False, True):
            with LLM(path, dtype="bf16", enforce_eager=eager, async_scheduling=overlap, max_num_seqs=8,
                     num_kv_blocks=64, max_model_len=256) as llm:
                assert (llm.executor.call("warmup_seconds") > 0) != eager
                outs[eager, overlap] = [o.token_ids for o in llm.generate(prompts, params)]
    assert outs[False, False] == outs[True, False] == outs[False, True] == outs[True, True]
    torch.cuda.synchronize()
