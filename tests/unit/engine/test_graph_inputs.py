"""The CUDA graphs' static inputs (engine/graph_inputs.py): the placeholder fill in the upload,
and the block tables rewritten only where they changed, checked against a scheduler's own
tables over a run that preempts and reorders its sequences."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from shardserve.engine.cuda_graphs import DecodeGraphs
from shardserve.engine.graph_inputs import BlockTableRows, GraphInputs
from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.prefill_graphs import PrefillGraphs
from shardserve.engine.request import Request
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import Scheduler


def test_graph_inputs_fill_placeholders_from_the_previous_step_tokens_in_the_upload():
    """Tokens still in flight: their rows and sources go up with the step's inputs, and the
    tokens are gathered on the device (both graph kinds)."""
    inputs = GraphInputs(4, 3, torch.device("cpu"))
    inputs.np64[0] = [5, 6, 7, 8]
    inputs.np32[:] = [1, 2, 3]
    inputs.upload(2, fill=([1, 3], torch.tensor([50, 60, 70]), [2, 0]))
    assert inputs.dev64[0].tolist() == [5, 70, 7, 50]
    assert inputs.dev32.tolist() == [1, 2, 0]  # the first len32 entries only


def test_a_row_holding_the_same_table_takes_only_its_new_blocks():
    rows = BlockTableRows(np.zeros((2, 6), dtype=np.int32))
    rows.write(0, 7, [11, 12, 13])
    rows.tables[0, 0] = -5  # a mark: rewritten only if the whole row is
    rows.write(0, 7, [11, 12, 13, 14])
    assert rows.tables[0].tolist() == [-5, 12, 13, 14, 0, 0]
    rows.write(0, 8, [21, 22])  # another table at this row: all of it
    assert rows.tables[0, :2].tolist() == [21, 22]
    rows.write(1, 8, [21, 22, 23])  # the same table at another row: all of it there
    assert rows.tables[1, :3].tolist() == [21, 22, 23]
    rows.tables[1, 0] = -5
    rows.write(1, -1, [31, 32, 33])  # no id (a test's or an eager helper's sequence): all of it
    assert rows.tables[1, :3].tolist() == [31, 32, 33]


def test_block_manager_gives_each_new_table_a_new_id():
    manager = BlockManager(16, 4)
    a, b = Request("a", [1, 2, 3], SamplingParams()), Request("b", [4, 5, 6], SamplingParams())
    assert manager.allocate(a, 3) and manager.allocate(b, 3)
    first = a.table_id
    assert first != b.table_id
    a.num_computed_tokens = 3
    assert manager.allocate(a, 4) and a.table_id == first and len(a.block_ids) == 2  # it grew
    manager.free(a)  # preempted: recomputed later into a new table
    a.num_computed_tokens = 0
    assert manager.allocate(a, 3) and a.table_id not in (first, b.table_id)


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_staged_tables_equal_the_scheduler_tables_through_preemptions(prefix_caching):
    """A real scheduler with too few blocks for its requests, so it preempts and readmits them
    while rows shift between steps (with prefix caching, readmitted requests and ones sharing a
    prompt prefix reuse cached blocks); every staged row must equal the sequence's block table,
    and every prefill token's cache slot must be its position's in that table."""
    block = 4
    manager = BlockManager(num_blocks=40, block_size=block, enable_prefix_caching=prefix_caching)
    scheduler = Scheduler(manager, max_num_seqs=6, max_num_batched_tokens=64, max_model_len=200,
                          enable_chunked_prefill=True, eos_token_ids=(2,))
    rng = random.Random(0)
    shared = [rng.randrange(3, 500) for _ in range(12)]
    requests = []
    for i in range(10):
        prompt = shared[: rng.randint(0, 12)] + [rng.randrange(3, 500) for _ in range(rng.randint(3, 30))]
        requests.append(Request(f"r{i}", prompt, SamplingParams(max_new_tokens=rng.randint(8, 60), ignore_eos=True)))
        scheduler.add(requests[-1])
    width = 200 // block + 1
    decode = DecodeGraphs(torch.nn.Identity(), torch.device("cpu"), 6, width, torch.empty(6, 1))
    decode.graphs = {b: _NoGraph() for b in decode.buckets}
    prefill = PrefillGraphs(torch.nn.Identity(), torch.device("cpu"), 6, 64, width, torch.empty(6, 1))
    steps = {"decode": 0, "mixed": 0}
    while scheduler.has_unfinished():
        out = scheduler.schedule()
        if out.seqs:
            kind = "decode" if decode.can_run(out.seqs) else "mixed"
            if kind == "decode":
                decode.run(out.seqs, block)
            else:
                assert prefill.can_run(out.seqs)
                prefill.stage(out.seqs, block)
                positions = [s.start_pos + j for s in out.seqs for j in range(len(s.token_ids))]
                blocks = [s.block_ids for s in out.seqs for _ in s.token_ids]
                want = [b[p // block] * block + p % block for b, p in zip(blocks, positions, strict=True)]
                assert prefill.inputs.np64[2, : len(want)].tolist() == want
            staged = (decode if kind == "decode" else prefill).tables.tables
            for row, seq in enumerate(out.seqs):
                assert staged[row, : len(seq.block_ids)].tolist() == seq.block_ids, (kind, row)
            steps[kind] += 1
        scheduler.update(out, {s.request_id: (rng.randrange(3, 500), None) for s in out.seqs if s.sampling})
    assert scheduler.num_preemptions > 0 and steps["decode"] > 20 and steps["mixed"] > 5
    assert (sum(r.num_cached_tokens for r in requests) > 0) == prefix_caching


class _NoGraph:
    def replay(self) -> None:
        pass
