"""One-GPU run (issue 6): GPU tests, kernel timings, Llama-3-8B-shaped decode and TTFT vs
transformers, in one call. Run on the device: PYTHONPATH=src python3 benchmarks/gpu_single.py
[--decode-kernel-only] (the decode attention's split counts alone)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import OUT, finish, run_pytest, stage  # noqa: E402

DEADLINE = 560  # seconds: the command's limit is 600


def tests():
    return run_pytest(["tests/gpu", "--ignore=tests/gpu/test_fast_all_reduce.py"], 200)


def ceilings():
    from triton.testing import do_bench

    from shardserve.bench.hardware import copy_bandwidth

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return {"gpu": torch.cuda.get_device_name(0), "copy_GBps": copy_bandwidth(torch.device("cuda")) / 1e9,
            "bf16_matmul_TFLOPs": 2 * 8192**3 / ms / 1e9}


def graph_time_us(fn, calls: int = 20) -> float:
    """Median microseconds per call of fn() replayed from a CUDA graph (no launch overhead, as
    in a decode step)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(9):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(samples)[4]


def weight_copies(n: int, k: int, act_dtype: torch.dtype, weight_dtype: torch.dtype, copies: int = 4) -> list:
    """`copies` random [n, k] weights as the decode GEMMs take them, (weight, scale): 16-bit in
    act_dtype (scale None) or 8-bit with per-row scales. Calls that rotate over them read every
    weight from HBM, as a decode step does."""
    from shardserve.kernels.weight_formats import quantize_rows

    out = []
    for _ in range(copies):
        w = torch.randn(n, k, device="cuda")
        out.append((w.to(act_dtype), None) if weight_dtype == act_dtype else quantize_rows(w, weight_dtype))
        del w
    return out


# (label, batch, query heads, KV heads, context, ALiBi): Llama-3-8B's, then BLOOM-176B's and
# OPT-30B's per-rank heads at TP4 (batch 4 x 32-288 tokens: the benchmark's contexts).
DECODE_SHAPES = [("llama-3-8b", 1, 32, 8, ctx, False) for ctx in (64, 160, 288, 1024, 4096)] + [
    ("llama-3-8b", 4, 32, 8, 288, False), ("llama-3-8b", 32, 32, 8, 1024, False),
    *[("bloom-tp4", 4, 28, 28, ctx, True) for ctx in (64, 160, 288)],
    *[("opt-30b-tp4", 4, 14, 14, ctx, False) for ctx in (64, 160, 288)],
]


def decode_kernel_times():
    """Decode attention in graphs: microseconds, KV GB/s, the default split count ("auto")
    against fixed ones (1 to 8; at Llama-3-8B batch 4 and 32 only auto and 1)."""
    from shardserve.kernels.paged_decode import paged_decode_attention

    rows = []
    for label, batch, heads, kv_heads, ctx, alibi in DECODE_SHAPES:
        nb = batch * (ctx // 16 + 1) + 4
        kc = torch.randn(nb, 16, kv_heads, 128, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(batch, heads, 128, device="cuda", dtype=torch.bfloat16)
        tables = torch.randperm(nb, device="cuda", dtype=torch.int32)[: batch * (ctx // 16 + 1)].view(batch, -1)
        lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
        slopes = torch.rand(heads, device="cuda") if alibi else None
        kv_bytes = 2 * batch * ctx * kv_heads * 128 * 2
        for splits in (None, 1) if label == "llama-3-8b" and batch > 1 else (None, 1, 2, 4, 8):
            args = (q, kc, vc, tables, lens, 128**-0.5, slopes)
            us = graph_time_us(lambda a=args, s=splits: paged_decode_attention(*a, num_splits=s))
            rows.append({"shape": label, "batch": batch, "ctx": ctx, "splits": splits or "auto", "us": round(us, 2),
                         "kv_GBps": round(kv_bytes / us / 1e3, 1)})
    return rows


def llama_decode():
    from shardserve.bench.latency import BenchConfig, run_bench

    cfg = BenchConfig(model="llama-3-8b", random_weights=True, tp=1, batch=1, prompt_len=32, new_tokens=256,
                      reps=3, baseline_reps=1, dtype="bf16", check_tokens=16, out_dir=OUT,
                      variants={"tp": {}, "tp-unfused": {"extra": {"fused_kernels": False}},
                                "tp-eager": {"enforce_eager": True}})
    results, context = run_bench(cfg)
    return {"summary": {r.engine: r.summary() | {"load_s": r.load_s, "warmup_s": r.warmup_s} for r in results},
            "correctness": context.get("correctness"), "copy_GBps": context["copy_bandwidth_GBps"]}


def llama_ttft():
    from shardserve.bench.latency import BenchConfig, run_bench

    cfg = BenchConfig(model="llama-3-8b", random_weights=True, tp=1, batch=1, prompt_len=512, new_tokens=4,
                      reps=5, engines=("tp",), dtype="bf16", check_tokens=0, out_dir=OUT / "ttft")
    results, _ = run_bench(cfg)
    ttft = results[0].summary()["ttft_ms"]
    flops = 2 * 8.03e9 * 512  # weights; attention adds < 1 %
    return {"ttft_ms": ttft, "TFLOPs": flops / ttft / 1e9}


def profile_decode():
    """Top CUDA kernels of graph-replayed decode steps (what the step time is made of)."""
    from torch.profiler import ProfilerActivity, profile

    from shardserve import LLM, SamplingParams
    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    d = write_config_dir("llama-3-8b", OUT.parent / "prof-model")
    write_placeholder_tokenizer(d, ModelConfig.from_hf(d))
    with LLM(str(d), dtype="bf16", load_format="random", max_model_len=512, num_kv_blocks=64, max_num_seqs=4) as llm:
        params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
        llm.generate([[100 + i for i in range(32)]], params)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            llm.generate([[200 + i for i in range(32)]], SamplingParams(max_new_tokens=32, temperature=0.0, ignore_eos=True))
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    (OUT / "profile_decode.txt").write_text(table)
    print(table[:6000], flush=True)
    return "profile_decode.txt"


if __name__ == "__main__":
    if "--decode-kernel-only" in sys.argv:
        stage("decode_kernel", decode_kernel_times, 20, DEADLINE)
        finish()
        sys.exit()
    stage("ceilings", ceilings, 20, DEADLINE)
    stage("gpu_tests", tests, 120, DEADLINE)
    stage("llama_decode", llama_decode, 150, DEADLINE)
    stage("llama_ttft_512", llama_ttft, 40, DEADLINE)
    stage("decode_kernel", decode_kernel_times, 20, DEADLINE)
    stage("profile", profile_decode, 40, DEADLINE)
    finish()
