"""Continuous batching with many sequences: which steps replay from CUDA graphs, and what the
mixed steps cost. Run on the device:
PYTHONPATH=src python3 benchmarks/mixed_steps.py [--model opt-30b] [--tp 4] [--requests 256]

All requests arrive at once (random prompt and output lengths, greedy, EOS ignored); up to
`max_num_seqs` run together, and each finished one lets a waiting one in, whose prompt then
shares a step with the running decodes. Variants: prefill graphs off (run first: the
reference) and on (engine/prefill_graphs.py). Prints, per variant, output tokens/s, the steps of
each kind (a mixed step within the graphs' bounds or not) and how its greedy tokens agree with
the reference's (divergence()).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")


def workload(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(16, 128))], rng.randint(16, 192)) for _ in range(n)]


def divergence(outputs, reference) -> dict:
    """Greedy tokens against the reference run's. Where a request's tokens part, the reference's
    gap between its two most likely tokens there (a near tie flips on rounding; a wrong step
    would part where the gap is wide), and the largest difference of the chosen tokens'
    logprobs before any parting."""
    gaps, before = [], 0.0
    for o, ref in zip(outputs, reference):
        j = next((i for i, (a, b) in enumerate(zip(o.token_ids, ref.token_ids)) if a != b), len(o.token_ids))
        before = max([before] + [abs(a - b) for a, b in zip(o.logprobs[:j], ref.logprobs[:j])])
        if j < len(o.token_ids):
            top = ref.top_logprobs[j]
            gaps.append(top[0][1] - top[1][1])
    gaps.sort()
    return {"same": f"{len(outputs) - len(gaps)}/{len(outputs)} requests", "max_logprob_diff_before": before,
            "gap_at_parting_median": gaps[len(gaps) // 2] if gaps else None, "gap_at_parting_max": max(gaps, default=None)}


def step_kind(sched, cap: int, max_tokens: int) -> str:
    if not sched.seqs:
        return "none"
    if all(len(s.token_ids) == 1 for s in sched.seqs):
        return "decode"
    if len(sched.seqs) > cap or sched.num_tokens > max_tokens:
        return "mixed, eager"
    return "mixed, graph"


def run_variant(model_dir: Path, tp: int, max_num_seqs: int, extra: dict, requests, cap: int) -> dict:
    from shardserve import LLM, SamplingParams
    from shardserve.engine.prefill_graphs import prefill_graph_buckets

    llm = LLM(str(model_dir), dtype="fp16", tensor_parallel_size=tp, load_format="random", max_model_len=512,
              max_num_seqs=max_num_seqs, enable_prefix_caching=False, extra=extra)
    try:
        max_tokens = prefill_graph_buckets(llm.config.max_num_batched_tokens)[-1]  # the graphs' largest
        kinds: Counter = Counter()
        schedule = llm.scheduler.schedule

        def counted():
            sched = schedule()
            kinds[step_kind(sched, cap, max_tokens)] += 1
            return sched

        def generate(batch):
            params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True, logprobs=True,
                                     top_logprobs=2) for _, n in batch]
            return llm.generate([p for p, _ in batch], params)

        generate(requests[: max_num_seqs // 2])  # warm-up: allocator, first launches
        llm.scheduler.schedule = counted
        t0 = time.perf_counter()
        outputs = generate(requests)
        seconds = time.perf_counter() - t0
        out_tokens = sum(len(o.token_ids) for o in outputs)
        return {"seconds": seconds, "output_tokens_per_s": out_tokens / seconds, "steps": dict(kinds),
                "ms_per_step": 1000 * seconds / sum(kinds.values()), "warmup_s": llm.warmup_seconds,
                "outputs": outputs}
    finally:
        llm.shutdown()


def main() -> None:
    import torch

    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="opt-30b")
    p.add_argument("--tp", type=int, default=max(1, min(4, torch.cuda.device_count())))
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=64)
    args = p.parse_args()
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config_dir(args.model, Path(tmp) / "model")
        config = ModelConfig.from_hf(model_dir)
        write_placeholder_tokenizer(model_dir, config)
        requests = workload(args.requests, config.vocab_size)
        variants = {"eager prefill": ({"prefill_graphs": False}, 0), "prefill graphs": ({}, args.max_num_seqs)}
        results, reference = {}, None
        for name, (extra, cap) in variants.items():  # the eager one first: the reference
            r = run_variant(model_dir, args.tp, args.max_num_seqs, extra, requests, cap)
            outputs = r.pop("outputs")
            reference = reference or outputs
            r["vs_eager"] = divergence(outputs, reference)
            results[name] = r
            print(f"{name}: {json.dumps(r)}", flush=True)
    (out / "mixed_steps.json").write_text(json.dumps({"model": args.model, "tp": args.tp, **results}, indent=2))
    print("\n| variant | s | output tokens/s | ms/step | steps by kind | vs eager |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['output_tokens_per_s']:.0f} | {r['ms_per_step']:.2f} | "
              f"{r['steps']} | {r['vs_eager']} |")


if __name__ == "__main__":
    main()
