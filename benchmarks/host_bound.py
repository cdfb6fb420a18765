"""Long generations of a small model, where the host's share of each step shows: 64 requests of
1700-token prompts, 256 new tokens each, OPT-125m-shaped with random weights, one GPU.

    PYTHONPATH=src python3 benchmarks/host_bound.py [--model opt-125m] [--requests 64]

Variants, each in its own process (an engine's KV cache takes the GPU's free memory until its
process ends), on the same engine settings:
- "cumulative, whole rows": every step builds each request's cumulative output and writes every
  block-table row whole, which is what every step cost before output kinds and table ids;
- "delta, whole rows": DELTA outputs (what the server's streams ask);
- "delta, new blocks only": DELTA outputs and the graphs' incremental block tables (now);
- "final, new blocks only": FINAL outputs (what LLM.generate and the server's answers ask);
then the first again, for the drift over the run.
Reports the decode steps' median interval (steps with every request decoding) and output tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")


def run_variant(model_dir: Path, kind: str, whole_rows: bool, prompts: list[list[int]], new_tokens: int) -> dict:
    from shardserve import LLM, OutputKind, SamplingParams
    from shardserve.engine.graph_inputs import BlockTableRows

    incremental = BlockTableRows.write
    if whole_rows:
        BlockTableRows.write = lambda self, row, _, blocks: incremental(self, row, -1, blocks)
    llm = LLM(str(model_dir), dtype="fp16", load_format="random", max_model_len=len(prompts[0]) + new_tokens + 32,
              max_num_seqs=len(prompts), enable_prefix_caching=False)
    try:
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(prompts[:4]):  # warm-up: allocator, first launches
            llm.add_request(f"w{i}", prompt[:64], SamplingParams(max_new_tokens=8, ignore_eos=True))
        while llm.has_unfinished():
            llm.step()
        for i, prompt in enumerate(prompts):
            llm.add_request(f"r{i}", prompt, params, output_kind=OutputKind(kind))
        stamps, decoding, tokens = [], [], 0
        started = time.perf_counter()
        while llm.has_unfinished():
            outs = llm.step()
            stamps.append(time.perf_counter())
            decoding.append(not llm.scheduler.waiting and all(r.num_computed_tokens >= len(r.prompt_token_ids)
                                                              for r in llm.scheduler.running))
            tokens += sum(len(o.delta_token_ids) for o in outs if kind != "final" or o.finished)
        seconds = time.perf_counter() - started
        gaps = [b - a for a, b, d in zip(stamps, stamps[1:], decoding[1:]) if d]
        return {"seconds": seconds, "output_tokens_per_s": tokens / seconds,
                "decode_ms_per_step_median": 1000 * statistics.median(gaps), "decode_steps": len(gaps)}
    finally:
        llm.shutdown()
        BlockTableRows.write = incremental


VARIANTS = {"cumulative, whole rows": ("cumulative", True), "delta, whole rows": ("delta", True),
            "delta, new blocks only": ("delta", False), "final, new blocks only": ("final", False),
            "cumulative, whole rows, again": ("cumulative", True)}  # the drift over the run


def main() -> None:
    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="opt-125m")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=1700)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--variant", help="run this one variant here (the script runs each in its own process: "
                                     "an engine's KV cache takes the GPU's free memory until its process ends)")
    p.add_argument("--model-dir")
    args = p.parse_args()
    if args.variant:
        config = ModelConfig.from_hf(args.model_dir)
        rng = random.Random(0)
        prompts = [[rng.randrange(4, config.vocab_size) for _ in range(args.prompt_len)] for _ in range(args.requests)]
        kind, whole_rows = VARIANTS[args.variant]
        print(json.dumps(run_variant(Path(args.model_dir), kind, whole_rows, prompts, args.new_tokens)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config_dir(args.model, Path(tmp) / "model")
        write_placeholder_tokenizer(model_dir, ModelConfig.from_hf(model_dir))
        for name in VARIANTS:
            run = subprocess.run([sys.executable, __file__, "--variant", name, "--model-dir", str(model_dir),
                                  "--requests", str(args.requests), "--prompt-len", str(args.prompt_len),
                                  "--new-tokens", str(args.new_tokens)], capture_output=True, text=True, check=True)
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(f"\n{args.model}, {args.requests} x {args.prompt_len}-token prompts, {args.new_tokens} new tokens")
    print("| variant | s | output tokens/s | decode ms/step (median) |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['output_tokens_per_s']:.0f} | {r['decode_ms_per_step_median']:.3f} |")


if __name__ == "__main__":
    main()
