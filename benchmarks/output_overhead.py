"""Host time of the engine's schedule + update beats per decode step, outputs included, per kind.

    python benchmarks/output_overhead.py

64 requests decode together, 2000 tokens into their generation. Each step the scheduler appends
one token to each, and the output processor (the built-in model's byte-level BPE tokenizer)
detokenises it, searches the stop strings and builds the outputs that the request's output kind
asks for: LLM._update as the engine runs it, without a model. benchmarks/scheduler_overhead.py
times the scheduler alone.
"""

import time
from types import SimpleNamespace

from shardserve.assets import default_model_path
from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.llm import LLM
from shardserve.engine.output_processor import OutputProcessor
from shardserve.engine.prompt_logprobs import StepResult
from shardserve.engine.request import OutputKind, Request
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import Scheduler
from shardserve.engine.tokenizer import load_tokenizer

TEXT = ("Serving engines stream their answers token by token; a client sees each word as soon as "
        "the model has it, and the server must not spend longer on the bookkeeping than the GPU "
        "spends on the step. ")
TOP = [(7, -1.5), (11, -2.5), (13, -3.5), (17, -4.5), (19, -5.5)]


def run(tokenizer, kind: OutputKind, params: SamplingParams, batch=64, generated=2000, steps=20,
        rounds=10) -> float:
    """Microseconds per step once `generated` tokens are out: the best of `rounds` rounds of
    `steps` steps (the least disturbed by whatever else the machine runs)."""
    text_ids = tokenizer.encode(TEXT, add_special_tokens=False)
    total = generated + steps * rounds
    bm = BlockManager(num_blocks=batch * (total // 16 + 4), block_size=16)
    s = Scheduler(bm, max_num_seqs=batch, max_num_batched_tokens=batch * 64, max_model_len=total + 64,
                  enable_chunked_prefill=True, eos_token_ids=(2,))
    outputs = OutputProcessor(tokenizer)
    # LLM._update reads these two attributes only: the beat as the engine runs it, without a model.
    engine = SimpleNamespace(scheduler=s, outputs=outputs)
    for i in range(batch):
        request = Request(f"r{i}", text_ids[:16], params, output_kind=kind)
        outputs.add(request)
        s.add(request)

    def step(n: int) -> None:
        sched = s.schedule()
        token = text_ids[n % len(text_ids)]
        LLM._update(engine, sched, StepResult({q.request_id: (token, -0.5, TOP) for q in sched.seqs}))

    step(0)  # the prefill
    for n in range(generated):
        step(n)
    best = float("inf")
    for start in range(generated, total, steps):
        t0 = time.perf_counter()
        for n in range(start, start + steps):
            step(n)
        best = min(best, (time.perf_counter() - t0) / steps * 1e6)
    return best


def main() -> None:
    tokenizer = load_tokenizer(str(default_model_path()))
    cases = {
        "plain": SamplingParams(max_new_tokens=4000, ignore_eos=True),
        "stop string + logprobs (top 5)": SamplingParams(max_new_tokens=4000, ignore_eos=True, stop=["<|end|>"],
                                                         logprobs=True, top_logprobs=5),
    }
    print("batch 64, 2000 tokens generated: us/step (schedule + update + outputs)")
    for name, params in cases.items():
        for kind in OutputKind:
            print(f"{name:32} {kind.value:10} {run(tokenizer, kind, params):6.0f}")


if __name__ == "__main__":
    main()
