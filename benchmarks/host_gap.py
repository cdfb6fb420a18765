"""How much of a decode step is host time? Llama-3-8B-shaped bf16, batch 1, one GPU.

Measures, on the same engine: the engine's step loop (ms/step), the bucket-1 decode graph
replayed back to back with no host work between replays (the GPU's own step time, kernel gaps
included), and the host's share of a step split into its beats (schedule, execute, update).
Then time to first token of a 32-token prompt, timed and profiled (why is it slower with CUDA
graphs captured than without?).
Run on the device: PYTHONPATH=src python3 benchmarks/host_gap.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from stages import OUT, finish, stage  # noqa: E402


def _engine(model: str, **options):
    from shardserve import LLM
    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    d = write_config_dir(model, OUT.parent / f"{model}-gap")
    write_placeholder_tokenizer(d, ModelConfig.from_hf(d))
    return LLM(str(d), dtype="bf16", load_format="random", max_model_len=1024, num_kv_blocks=256, max_num_seqs=8,
               **options)


def host_gap(model: str = "llama-3-8b", steps: int = 128) -> dict:
    from shardserve import SamplingParams

    params = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    with _engine(model) as llm:
        llm.generate([[100 + i for i in range(32)]], params)  # warm
        llm.add_request(None, [200 + i for i in range(32)], params)
        llm.step()  # the prefill
        beats = {"schedule": 0.0, "execute": 0.0, "update": 0.0}
        torch.cuda.synchronize()
        t_loop = time.perf_counter()
        n = 0
        while llm.has_unfinished():
            t0 = time.perf_counter()
            sched = llm.scheduler.schedule()
            t1 = time.perf_counter()
            sampled = llm.executor.call("execute_model", sched)
            t2 = time.perf_counter()
            for request in llm.scheduler.update(sched, sampled):
                llm.outputs.new_text(request, request.output_token_ids[-1:])
                llm.outputs.output(request)
            t3 = time.perf_counter()
            beats["schedule"] += t1 - t0
            beats["execute"] += t2 - t1
            beats["update"] += t3 - t2
            n += 1
        loop_ms = (time.perf_counter() - t_loop) * 1e3 / n

        graphs = llm.executor.runner.cuda_graphs
        graph = graphs.graphs[1]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        start.record()
        t0 = time.perf_counter()
        for _ in range(100):
            graph.replay()
        launch_us = (time.perf_counter() - t0) * 1e4
        end.record()
        end.synchronize()
        replay_ms = start.elapsed_time(end) / 100
        ttft = prefill_profile(llm)
    return ttft | {"loop_ms_per_step": loop_ms, "graph_back_to_back_ms": replay_ms,
            "host_share_ms": loop_ms - replay_ms, "replay_launch_us": launch_us,
            "beats_ms_per_step": {k: v * 1e3 / n for k, v in beats.items()}, "steps": n}


def prefill_profile(llm) -> dict:
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
    (OUT / "prefill_profile.txt").write_text(
        averages.table(sort_by="cuda_time_total", row_limit=20) + averages.table(sort_by="cpu_time_total", row_limit=20)
    )
    print(averages.table(sort_by="cpu_time_total", row_limit=12), flush=True)
    return {"ttft_ms": times}


if __name__ == "__main__":
    stage("host_gap", host_gap, 60, 560)

    def ttft_eager():
        with _engine("llama-3-8b", enforce_eager=True) as llm:
            return prefill_profile(llm)

    stage("ttft_eager", ttft_eager, 30, 560)
    finish()
