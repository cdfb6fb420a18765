"""One-GPU diagnosis of the TP4 decode step (issue 6): GEMM time at decode sizes with and
without a fused bias, and a profile of OPT-30B decode (unsharded, on one H200) in CUDA graphs.
Run on the device: PYTHONPATH=src python3 benchmarks/gpu_diag.py"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gpu_single import graph_time_us  # noqa: E402
from stages import OUT, finish, stage  # noqa: E402

DEADLINE = 500


def gemm_bias():
    """[M, K] x [N, K]^T at decode M: bias fused into the GEMM vs added by a second kernel."""
    rows = []
    shapes = {"opt30b-tp4-qkv": (5376, 7168), "opt30b-tp4-fc1": (7168, 7168), "opt30b-tp4-fc2": (7168, 7168),
              "opt30b-tp1-fc1": (28672, 7168), "llama8b-gate-up": (28672, 4096)}
    for name, (n, k) in shapes.items():
        ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(4)]  # rotate: no L2 reuse
        b = torch.randn(n, device="cuda", dtype=torch.float16)
        for m in (1, 4):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)

            def fused(ws=ws, x=x, b=b):
                for w in ws:
                    F.linear(x, w, b)

            def apart(ws=ws, x=x, b=b):
                for w in ws:
                    F.linear(x, w) + b

            def nobias(ws=ws, x=x):
                for w in ws:
                    F.linear(x, w)

            row = {"gemm": name, "M": m}
            for label, fn in (("fused_bias", fused), ("bias_apart", apart), ("no_bias", nobias)):
                us = graph_time_us(fn, calls=5) / 4
                row[f"{label}_us"] = round(us, 1)
                row[f"{label}_TBps"] = round(n * k * 2 / us / 1e6, 2)
            rows.append(row)
            print(row, flush=True)
    return rows


def opt30b_profile():
    from torch.profiler import ProfilerActivity, profile

    from shardserve import LLM, SamplingParams
    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    d = write_config_dir("opt-30b", OUT.parent / "opt30b")
    write_placeholder_tokenizer(d, ModelConfig.from_hf(d))
    import time

    with LLM(str(d), dtype="fp16", load_format="random", max_model_len=320, num_kv_blocks=128, max_num_seqs=8) as llm:
        prompts = [[100 + i + j for i in range(32)] for j in range(4)]
        params = SamplingParams(max_new_tokens=64, temperature=0.0, ignore_eos=True)
        llm.generate(prompts, params)
        t0 = time.perf_counter()
        llm.generate(prompts, params)
        t64 = time.perf_counter() - t0
        t0 = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_new_tokens=1, temperature=0.0))
        t1 = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            llm.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True))
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    (OUT / "profile_opt30b.txt").write_text(table)
    print(table[:7000], flush=True)
    return {"ms_per_step": (t64 - t1) / 63 * 1e3, "ttft_ms": t1 * 1e3}


if __name__ == "__main__":
    stage("gemm_bias", gemm_bias, 30, DEADLINE)
    stage("opt30b_tp1_profile", opt30b_profile, 60, DEADLINE)
    finish()
