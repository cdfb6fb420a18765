"""Host time of the engine's schedule + update beats per decode step, without a model.

    python benchmarks/scheduler_overhead.py

On a GPU this time is spent while the GPU idles between steps, so it is measured on its own.
"""

import time

from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.request import Request
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import Scheduler


def run(batch=64, ctx=2000, steps=200):
    bm = BlockManager(num_blocks=batch * (ctx // 16 + 40), block_size=16)
    s = Scheduler(bm, max_num_seqs=batch, max_num_batched_tokens=batch * ctx, max_model_len=ctx + 1000,
                  enable_chunked_prefill=True, eos_token_ids=(2,))
    for i in range(batch):
        s.add(Request(f"r{i}", list(range(3, ctx + 3)), SamplingParams(max_new_tokens=900, ignore_eos=True)))
    out = s.schedule()  # prefill
    s.update(out, {q.request_id: (5, None) for q in out.seqs})
    t0 = time.perf_counter()
    for _ in range(steps):
        out = s.schedule()
        s.update(out, {q.request_id: (5, None) for q in out.seqs})
    return (time.perf_counter() - t0) / steps * 1e6

print(f"batch 64 x 2000 ctx: {run():.0f} us/step (schedule + update)")
print(f"batch 1 x 2000 ctx: {run(batch=1):.0f} us/step")
