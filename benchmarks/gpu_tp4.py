"""Four-GPU run (issue 6): fast all-reduce test and sweep, then OPT-30B fp16 TP4 vs Accelerate
on the same GPUs, batch 4 x 256 new tokens. Run on the device:
PYTHONPATH=src python3 benchmarks/gpu_tp4.py [--no-tests] [--quick] [--sweep] [--llama-check]
    [--two-barriers] [--eager-prefill]"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import OUT, finish, run_pytest, stage  # noqa: E402

DEADLINE = 570
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")


def opt30b(quick: bool, two_barriers: bool = False, eager_prefill: bool = False):
    """TP over every GPU up to 4 (the issue's setting is 4; a 2-GPU machine runs TP2). Variants:
    ours and (not quick) ours without programmatic dependent launch (kernels/pdl.py), with the norm
    after the all-reduce in a kernel of its own, and on NCCL. quick: 5 reps and ours alone, for a
    short device lease. two_barriers: also ours with the all-reduce kernels' second barrier in
    place of the split one (parallel/one_shot_kernel.py). eager_prefill: also ours with every
    prefill step run eagerly, not replayed from CUDA graphs (engine/prefill_graphs.py)."""
    from shardserve.bench.latency import BenchConfig, run_bench

    variants = {"tp": {}}
    if not quick:
        variants["tp-no-pdl"] = {"extra": {"pdl": False}}
        variants["tp-norm-apart"] = {"extra": {"fused_all_reduce_norm": False}}
        variants["tp-nccl"] = {"extra": {"fast_all_reduce": False}}
    if two_barriers:
        variants["tp-two-barriers"] = {"extra": {"all_reduce_split_barrier": False}}
    if eager_prefill:
        variants["tp-eager-prefill"] = {"extra": {"prefill_graphs": False}}
    cfg = BenchConfig(model="opt-30b", random_weights=True, tp=min(4, torch.cuda.device_count()), batch=4, prompt_len=32, new_tokens=256,
                      reps=5 if quick else 10, baseline_reps=3, dtype="fp16", check_tokens=16, out_dir=OUT,
                      variants=variants)
    results, context = run_bench(cfg)
    return {"summary": {r.engine: r.summary() | {"load_s": r.load_s, "warmup_s": r.warmup_s} for r in results},
            "correctness": context.get("correctness"), "copy_GBps": context["copy_bandwidth_GBps"],
            "machine": context["machine"]}


def llama_check():
    """Llama-3-8B bf16 logits vs transformers bf16 and float32 (the half-precision noise floor)."""
    from shardserve.bench.latency import BenchConfig, run_bench

    cfg = BenchConfig(model="llama-3-8b", random_weights=True, tp=1, batch=1, prompt_len=32, new_tokens=8,
                      reps=1, engines=("tp",), dtype="bf16", check_tokens=16, out_dir=OUT / "llama")
    return run_bench(cfg)[1]["correctness"]


def sweep():
    from allreduce_sweep import sweep as run

    return run(min(4, torch.cuda.device_count()), str(OUT / "allreduce.json"))


if __name__ == "__main__":
    if "--no-tests" not in sys.argv:
        tests = ["tests/gpu/test_fast_all_reduce.py", "tests/gpu/test_fused_kernels.py"]
        stage("gpu_tests", lambda: run_pytest(tests, 90), 60, DEADLINE)
    if "--sweep" in sys.argv:
        stage("allreduce_sweep", sweep, 60, DEADLINE)
    if "--llama-check" in sys.argv:
        stage("llama_check", llama_check, 60, DEADLINE)
    flags = ("--quick" in sys.argv, "--two-barriers" in sys.argv, "--eager-prefill" in sys.argv)
    stage(f"opt30b_tp{min(4, torch.cuda.device_count())}", lambda: opt30b(*flags), 150, DEADLINE)
    finish()
