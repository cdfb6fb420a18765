"""Prefill CUDA graphs (engine/prefill_graphs.py): a step padded to its bucket gives the eager
step's logits and writes the same KV cache. The padded forward runs eagerly here, with the
Triton attention kernels in Triton's interpreter; tests/gpu captures and replays it."""

from __future__ import annotations

import pytest
import torch

from helpers.markers import needs_interpreter
from helpers.prefill_cases import BLOCK, ENGINE_OPTIONS, eager_logits, kv_caches, mixed_step
from shardserve import LLM
from shardserve.engine.cuda_graphs import logits_buffer
from shardserve.engine.prefill_graphs import PrefillGraphs
from shardserve.engine.request import PLACEHOLDER
from shardserve.engine.scheduler import ScheduledSeq

pytest.importorskip("triton")


@needs_interpreter
@pytest.mark.parametrize("arch,max_seqs", [("llama", 8), ("bloom", 8), ("llama", 24)])
def test_padded_step_matches_eager_step(tiny_checkpoint, arch, max_seqs):
    """max_seqs 24: the step's bucket of 8 sequences reads the first 8 of inputs laid out for 24."""
    with LLM(str(tiny_checkpoint(arch)), dtype="fp32", attention_backend="triton", **ENGINE_OPTIONS) as llm:
        runner = llm.executor.runner
        step = mixed_step(runner)
        prefixes_only = kv_caches(runner)
        eager = eager_logits(runner, step)
        eager_cache = kv_caches(runner)
        for layer_cache, saved in zip((c for layer in runner.attention_layers for c in layer.kv_cache), prefixes_only):
            layer_cache.copy_(saved)  # the padded step must write its own tokens' K/V, and read them
        logits = logits_buffer(runner.model, max_seqs, torch.device("cpu"))
        graphs = PrefillGraphs(runner.model, torch.device("cpu"), max_seqs, 2048, 16, logits)
        assert graphs.can_run(step)
        bucket = graphs.stage(step, BLOCK)
        assert bucket == (16, 8)
        # Each sequence's first token row, as the device reads it; the padding sequences' are empty.
        assert graphs.inputs.dev32[: max_seqs + 1].tolist() == [0, 5, 12] + [13] * (max_seqs - 2)
        logits.fill_(float("nan"))
        with torch.inference_mode():
            padded = graphs.forward(bucket)
        assert padded.data_ptr() == logits.data_ptr()  # written into the graphs' shared buffer
        torch.testing.assert_close(padded[:3], eager, rtol=1e-4, atol=1e-4)
        # The step's tokens wrote what the eager step did; the padding tokens wrote nothing.
        for before, after in zip(eager_cache, kv_caches(runner), strict=True):
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4, equal_nan=True)  # unused blocks: as allocated


def test_steps_past_the_buckets_run_eagerly():
    graphs = PrefillGraphs(torch.nn.Identity(), torch.device("cpu"), 8, 256, 4, torch.empty(8, 10))
    assert graphs.token_buckets == [16, 32, 64, 96, 128, 160, 192, 224, 256] and graphs.max_seqs == 8

    def seq(n: int, blocks: int = 1) -> ScheduledSeq:
        return ScheduledSeq("r", list(range(n)), 0, list(range(blocks)), None)

    assert graphs.can_run([seq(100), seq(156)])
    assert not graphs.can_run([seq(100), seq(157)])  # 257 tokens
    assert not graphs.can_run([seq(1)] * 9)  # 9 sequences
    assert not graphs.can_run([seq(1, blocks=5)])  # a block table past the graphs' width
    assert not graphs.can_run([])


def test_a_placeholder_takes_the_previous_step_token_at_its_sequence_first_row():
    """Asynchronous scheduling: a decode token in flight beside prompts, filled on the device."""
    graphs = PrefillGraphs(torch.nn.Identity(), torch.device("cpu"), 8, 64, 4, torch.empty(8, 10))
    step = [ScheduledSeq("a", [5, 6, 7], 0, [0], None), ScheduledSeq("b", [PLACEHOLDER], 4, [1, 2], None),
            ScheduledSeq("c", [8, 9], 0, [3], None), ScheduledSeq("d", [PLACEHOLDER], 6, [4, 5], None)]
    previous = torch.tensor([70, 71, 72])  # the previous step's sampled tokens, on the device
    assert graphs.stage(step, 4, fill=([1, 3], previous, [2, 0])) == (16, 8)
    assert graphs.inputs.dev64[0, :7].tolist() == [5, 6, 7, 72, 8, 9, 70]


def test_a_step_takes_the_smallest_bucket_few_sequences_their_own_graphs():
    """Steps of a few sequences keep graphs of FEW_SEQS (the attention grid grows with a bucket's
    sequences); mixed steps of a full batch take max_num_seqs, capped at the token count."""
    graphs = PrefillGraphs(torch.nn.Identity(), torch.device("cpu"), 64, 512, 4, torch.empty(64, 10))
    assert (16, 8) in graphs.buckets and (16, 16) in graphs.buckets and (16, 64) not in graphs.buckets
    assert graphs.bucket(4, 128) == (128, 8)  # four 32-token prompts
    assert graphs.bucket(9, 16) == (16, 16)
    assert graphs.bucket(63, 150) == (160, 64)  # a full batch of decodes and a new prompt
    assert graphs.bucket(8, 500) == (512, 8)
    assert len(graphs.buckets) == 2 * len(graphs.token_buckets)


def test_capture_buckets_runs_each_bucket_eagerly_then_captures_it_largest_first(monkeypatch):
    """engine/cuda_graphs.capture_buckets, which both graph kinds use, with torch.cuda's graph
    calls recorded instead of made (no GPU here)."""
    from contextlib import contextmanager

    from shardserve.engine import cuda_graphs

    calls = []

    class FakeGraph:
        pass

    @contextmanager
    def capturing(graph, pool):
        calls.append(("capture", pool))
        yield
        calls.append(("end",))

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capturing)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(("sync",)))

    def forward(bucket):
        calls.append(("forward", bucket))
        return torch.full((1,), bucket)

    graphs = cuda_graphs.capture_buckets([16, 64, 32], forward, torch.device("cpu"), "pool")
    assert list(graphs) == [64, 32, 16] and all(isinstance(g, FakeGraph) for g in graphs.values())
    per_bucket = [("forward", 64), ("sync",), ("capture", "pool"), ("forward", 64), ("end",)]
    assert calls[:5] == per_bucket and calls[-1] == ("sync",) and len(calls) == 16

