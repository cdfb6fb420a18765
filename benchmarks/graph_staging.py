"""Host time of staging one step's inputs for a CUDA graph (engine/cuda_graphs.py DecodeGraphs.run,
engine/prefill_graphs.py PrefillGraphs.stage), replays stubbed out: no GPU needed.

    PYTHONPATH=src python3 benchmarks/graph_staging.py

Sequences keep their rows and tables from step to step, as in a steady decode batch (where a
table gains a block every 16 tokens; here none do, so "new blocks only" writes no block). "whole
rows" gives them no table id, so every row's block table is written in full (what every step
cost before block tables were written incrementally); "new blocks only" gives each its table's
id. A tree whose ScheduledSeq has no table_id (an older commit on PYTHONPATH) measures "whole
rows" twice.
"""

from __future__ import annotations

import dataclasses
import random
import time

import torch

from shardserve.engine.cuda_graphs import DecodeGraphs
from shardserve.engine.prefill_graphs import PrefillGraphs
from shardserve.engine.scheduler import ScheduledSeq

BLOCK = 16
HAS_TABLE_IDS = "table_id" in {f.name for f in dataclasses.fields(ScheduledSeq)}


class _NoGraph:
    def replay(self) -> None:
        pass


def decode_seqs(n: int, context: int, with_ids: bool) -> list[ScheduledSeq]:
    rng = random.Random(0)
    seqs = []
    for i in range(n):
        start = context - rng.randrange(50)
        blocks = [rng.randrange(100_000) for _ in range(start // BLOCK + 1)]
        ids = {"table_id": i} if with_ids and HAS_TABLE_IDS else {}
        seqs.append(ScheduledSeq(f"r{i}", [5], start, blocks, None, **ids))
    return seqs


def best_us(fn, *args, calls: int = 200, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls // rounds):
            fn(*args)
        best = min(best, (time.perf_counter() - started) / (calls // rounds) * 1e6)
    return best


def main() -> None:
    print("| step | sequences x context | whole rows, us | new blocks only, us |")
    print("| --- | --- | --- | --- |")
    for n, context in ((64, 256), (64, 2000), (256, 1000)):
        width = context // BLOCK + 8
        decode = DecodeGraphs(torch.nn.Identity(), torch.device("cpu"), n, width, torch.empty(n, 1))
        decode.graphs = {b: _NoGraph() for b in decode.buckets}
        prefill = PrefillGraphs(torch.nn.Identity(), torch.device("cpu"), n, 512, width, torch.empty(n, 1))
        whole, new = decode_seqs(n, context, False), decode_seqs(n, context, True)
        print(f"| decode | {n} x {context} | {best_us(decode.run, whole, BLOCK):.0f} "
              f"| {best_us(decode.run, new, BLOCK):.0f} |")
        # A mixed step: a 64-token prompt joins the decodes (as under continuous batching).
        prompt = ScheduledSeq("p", list(range(64)), 0, [1, 2, 3, 4], None,
                              **({"table_id": 10**6} if HAS_TABLE_IDS else {}))
        whole[0], new[0] = dataclasses.replace(prompt, **({"table_id": -1} if HAS_TABLE_IDS else {})), prompt
        print(f"| mixed | {n} x {context} | {best_us(prefill.stage, whole, BLOCK):.0f} "
              f"| {best_us(prefill.stage, new, BLOCK):.0f} |")


if __name__ == "__main__":
    main()
