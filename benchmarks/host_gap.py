"""How much of a decode step is host time, and how much of it asynchronous scheduling hides?
Llama-3-8B-shaped bf16, batch 1, one GPU.

Per engine variant: the engine's own step loop (ms per decode step), and (synchronous variant)
the bucket-1 decode graph replayed back to back with no host work between replays, i.e. the
GPU's own step time with its kernel gaps. Then time to first token of a 32-token prompt, timed
and profiled, with and without CUDA graphs.
Run on the device: PYTHONPATH=src python3 benchmarks/host_gap.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import OUT, finish, stage  # noqa: E402


def _engine(model: str = "llama-3-8b", **options):
    from shardserve import LLM
    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    d = write_config_dir(model, OUT.parent / f"{model}-gap")
    write_placeholder_tokenizer(d, ModelConfig.from_hf(d))
    return LLM(str(d), dtype="bf16", load_format="random", max_model_len=1024, num_kv_blocks=256, max_num_seqs=8,
               **options)


def step_loop(async_scheduling: bool, steps: int = 128) -> dict:
    from shardserve import SamplingParams

    params = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    with _engine(async_scheduling=async_scheduling) as llm:
        llm.generate([[100 + i for i in range(32)]], params)  # warm
        llm.add_request(None, [200 + i for i in range(32)], params)
        while not any(len(o.token_ids) >= 2 for o in llm.step()):  # past the prefill
            pass
        torch.cuda.synchronize()
        t0, n = time.perf_counter(), 0
        while llm.has_unfinished():
            n += len(llm.step())
        out = {"loop_ms_per_step": (time.perf_counter() - t0) * 1e3 / n, "steps": n,
               "warmup_s": llm.warmup_seconds}
        if not async_scheduling:
            out |= graph_back_to_back(llm) | prefill_profile(llm, "graphs")
    return out


def graph_back_to_back(llm) -> dict:
    graph = llm.executor.runner.cuda_graphs.graphs[1]
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(100):
        graph.replay()
    end.record()
    end.synchronize()
    return {"graph_back_to_back_ms": start.elapsed_time(end) / 100}


def prefill_profile(llm, label: str) -> dict:
    """TTFT (max_new_tokens=1) of a 32-token prompt, 5 times, then one under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    from shardserve import SamplingParams

    one = SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True)
    times = []
    for i in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.generate([[300 + 40 * i + j for j in range(32)]], one)
        times.append((time.perf_counter() - t0) * 1e3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate([[900 + j for j in range(32)]], one)
    averages = prof.key_averages()
    (OUT / f"prefill_profile_{label}.txt").write_text(
        averages.table(sort_by="cuda_time_total", row_limit=20) + averages.table(sort_by="cpu_time_total", row_limit=20)
    )
    print(averages.table(sort_by="cpu_time_total", row_limit=12), flush=True)
    return {"ttft_ms": times}


def ttft_eager() -> dict:
    with _engine(enforce_eager=True) as llm:
        return prefill_profile(llm, "eager")


if __name__ == "__main__":
    stage("sync_steps", lambda: step_loop(False), 60, 560)
    stage("async_steps", lambda: step_loop(True), 40, 560)
    stage("ttft_eager", ttft_eager, 30, 560)
    finish()
