"""Why is the first token slower with tensor parallelism? OPT-30B fp16, 4 x 32 prompt tokens:
time to first token (generate with max_new_tokens=1, 10 reps) of our engine at TP over every GPU
(up to 4) with one knob changed per variant, and at TP1 on one GPU; then, where the engine can
profile its ranks, one prefill under torch's profiler on every rank ($OUT/profile/).
Run on the device: PYTHONPATH=src python3 benchmarks/ttft_tp.py [--no-ablation]"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import OUT, finish, stage  # noqa: E402

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
TP = min(4, torch.cuda.device_count())
VARIANTS = {
    "tp": {},
    "eager": {"enforce_eager": True},
    "unfused": {"extra": {"fused_kernels": False}},
    "sync": {"async_scheduling": False},
    "nccl": {"extra": {"fast_all_reduce": False}},
    "one-shot-prefill": {"extra": {"fast_all_reduce_max_kb": 4096}},  # prefill's 1.8 MB sums too
}


def ttft(tp: int, variants: dict) -> dict:
    from shardserve.bench.latency import BenchConfig, run_bench

    cfg = BenchConfig(model="opt-30b", random_weights=True, tp=tp, batch=4, prompt_len=32, new_tokens=2, reps=10,
                      engines=("tp",), dtype="fp16", check_tokens=0, out_dir=OUT / f"tp{tp}", variants=variants)
    results, _ = run_bench(cfg)
    return {r.engine: {"ttft_ms": round(r.summary()["ttft_ms"], 1), "ttfts_ms": [round(t * 1e3, 1) for t in r.ttfts_s]}
            for r in results}


def profile_prefill(tp: int) -> dict:
    """One 4 x 32-token prefill (max_new_tokens=1) under the profiler on every rank."""
    from shardserve import LLM, SamplingParams
    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    d = write_config_dir("opt-30b", OUT.parent / "opt-30b-profile")
    write_placeholder_tokenizer(d, ModelConfig.from_hf(d))
    one = SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True)
    batch = [[100 + 7 * i + j for j in range(32)] for i in range(4)]
    with LLM(str(d), dtype="fp16", load_format="random", tensor_parallel_size=tp, max_model_len=256,
             num_kv_blocks=64, enable_prefix_caching=False) as llm:
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            llm.generate(batch, one)
            times.append(round((time.perf_counter() - t0) * 1e3, 1))
        llm.start_profile(str(OUT / "profile"))
        llm.generate(batch, one)
        llm.stop_profile()
    for rank in range(tp):
        print(f"---- rank {rank}\n" + (OUT / "profile" / f"rank{rank}.txt").read_text()[:15000], flush=True)
    return {"ttft_ms": times}


if __name__ == "__main__":
    stage(f"profile_tp{TP}", lambda: profile_prefill(TP), 60, 560)
    if "--no-ablation" not in sys.argv:
        stage(f"ttft_tp{TP}", lambda: ttft(TP, VARIANTS), 150, 560)
    stage("ttft_tp1", lambda: ttft(1, {"tp": {}}), 60, 560)
    finish()
