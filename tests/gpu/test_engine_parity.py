"""The whole GPU fast path (Triton attention, fused kernels, CUDA graphs) vs transformers.

Tiny checkpoints of each architecture family with random weights: per-position logits cosine and
greedy tokens against transformers (the benchmark's own check), and CUDA-graph decode against
eager decode on a batch whose size needs a padded bucket.
"""

from __future__ import annotations

import pytest
import torch

from shardserve import LLM, SamplingParams
from shardserve.bench.latency import BenchConfig, run_bench


@pytest.mark.parametrize("arch,dtype", [("llama", "bf16"), ("qwen2", "bf16"), ("opt", "fp16"), ("bloom", "bf16")])
def test_logits_match_transformers(tiny_checkpoint, tmp_path, arch, dtype):
    path = tiny_checkpoint(arch)
    cfg = BenchConfig(model=str(path), random_weights=True, batch=2, prompt_len=20, new_tokens=4, reps=1,
                      baseline_reps=1, engines=("tp",), dtype=dtype, check_tokens=12, out_dir=tmp_path)
    _, context = run_bench(cfg)
    check = context["correctness"]["tp"]
    assert check["passed"], check
    assert check["greedy_agree"] >= 4, check


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_cuda_graph_decode_equals_eager(tiny_checkpoint, arch):
    """Graphs or eager, steps overlapped (placeholders filled on the device) or not: one output."""
    path = str(tiny_checkpoint(arch))
    prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 53))]  # 3 sequences: bucket 4, one padding row
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for n in (24, 9, 17)]
    outs = {}
    for eager in (False, True):
        for overlap in (False, True):
            with LLM(path, dtype="bf16", enforce_eager=eager, async_scheduling=overlap, max_num_seqs=8,
                     num_kv_blocks=64, max_model_len=256) as llm:
                assert (llm.executor.runner.cuda_graphs is not None) != eager
                outs[eager, overlap] = [o.token_ids for o in llm.generate(prompts, params)]
    assert outs[False, False] == outs[True, False] == outs[False, True] == outs[True, True]
    torch.cuda.synchronize()


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_prefill_graphs_replay_the_eager_step(tiny_checkpoint, arch):
    """Prefill graphs (engine/prefill_graphs.py; extra.prefill_graphs=false runs eagerly): a
    replayed mixed step (a chunk after a cached prefix, a whole prompt, a decode token) gives the
    eager step's logits; generation with chunked prompts beside decodes, steps overlapped
    (placeholders filled on the device) or not, gives the eager engine's tokens."""
    from helpers.prefill_cases import BLOCK, ENGINE_OPTIONS, eager_logits, mixed_step

    path = str(tiny_checkpoint(arch))
    with LLM(path, dtype="bf16", **ENGINE_OPTIONS) as llm:
        runner = llm.executor.runner
        step = mixed_step(runner)
        eager = eager_logits(runner, step)
        assert runner.prefill_graphs.can_run(step)
        replayed = runner.prefill_graphs.run(step, BLOCK).clone()
        torch.testing.assert_close(replayed, eager, rtol=2e-2, atol=2e-2)
        assert torch.equal(replayed.argmax(-1), eager.argmax(-1))
    prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 53))]  # 33 tokens: chunked at 32
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for n in (24, 9, 17)]
    outs, replayed = {}, []
    for graphs in (False, True):
        for overlap in (False, True):
            with LLM(path, dtype="bf16", async_scheduling=overlap, max_num_seqs=8, num_kv_blocks=64,
                     max_model_len=256, max_num_batched_tokens=32, extra={"prefill_graphs": graphs}) as llm:
                prefill = llm.executor.runner.prefill_graphs
                assert (prefill is not None) == graphs
                if prefill is not None:
                    prefill.run = lambda seqs, *a, run=prefill.run, o=overlap: (replayed.append(o), run(seqs, *a))[1]
                outs[graphs, overlap] = [o.token_ids for o in llm.generate(prompts, params)]
    assert set(replayed) == {False, True}  # prefill steps were replayed, overlapped or not
    assert outs[False, False] == outs[True, False] == outs[False, True] == outs[True, True]


def test_prefill_graphs_replay_mixed_steps_of_a_full_batch(tiny_checkpoint):
    """Mixed steps of up to max_num_seqs sequences (a full batch of decodes beside new prompts'
    chunks) are replayed, and give the eager engine's tokens."""
    path = str(tiny_checkpoint("llama"))
    prompts = [list(range(5 + i, 12 + 3 * i)) for i in range(24)]
    params = [SamplingParams(max_new_tokens=6 + 5 * i % 19, temperature=0.0, ignore_eos=True) for i in range(24)]
    outs, replayed = {}, []
    for extra in ({"prefill_graphs": False}, {}):
        with LLM(path, dtype="bf16", max_num_seqs=16, num_kv_blocks=256, max_model_len=256,
                 max_num_batched_tokens=64, extra=extra) as llm:
            graphs = llm.executor.runner.prefill_graphs
            if graphs is not None:
                assert graphs.max_seqs == 16 and graphs.logits_out is llm.executor.runner.cuda_graphs.logits_out
                graphs.run = lambda seqs, *a, run=graphs.run: (replayed.append(len(seqs)), run(seqs, *a))[1]
            outs[graphs is None] = [o.token_ids for o in llm.generate(prompts, params)]
    assert max(replayed) > 8, replayed  # decodes of a full batch beside a new prompt
    assert outs[False] == outs[True]


def test_graphs_through_preemptions_write_the_block_tables_right(tiny_checkpoint, monkeypatch):
    """Too few KV blocks for the batch: requests are preempted and come back with new block tables
    in rows other requests held. The graphs write only the blocks a row lacks (table ids); a stale
    row would read another request's cache. Against the same graphs writing every row whole each
    step (same kernels, same buckets: equal tokens unless a row is stale), steps overlapped or not.
    Eager steps are no reference here: over ~80 tokens their GEMMs' rounding parts near ties."""
    from shardserve.engine.graph_inputs import BlockTableRows

    path = str(tiny_checkpoint("llama"))
    prompts = [list(range(7 + i, 30 + 2 * i)) for i in range(8)]
    params = [SamplingParams(max_new_tokens=40 + 7 * i, temperature=0.0, ignore_eos=True) for i in range(8)]
    incremental = BlockTableRows.write
    outs, preemptions = {}, {}
    for whole_rows in (True, False):
        if whole_rows:  # no table id: every row written whole
            monkeypatch.setattr(BlockTableRows, "write", lambda self, row, _, blocks: incremental(self, row, -1, blocks))
        else:
            monkeypatch.setattr(BlockTableRows, "write", incremental)
        for overlap in (False, True):
            with LLM(path, dtype="bf16", async_scheduling=overlap, max_num_seqs=8, num_kv_blocks=24,
                     max_model_len=160) as llm:
                assert llm.executor.runner.cuda_graphs is not None
                outs[whole_rows, overlap] = [o.token_ids for o in llm.generate(prompts, params)]
                preemptions[whole_rows, overlap] = llm.stats()["num_preemptions"]
    assert all(n > 0 for n in preemptions.values()), preemptions
    assert outs[True, False] == outs[False, False] and outs[True, True] == outs[False, True]


def test_warm_up_tunes_every_decode_gemm_row_class(tiny_checkpoint):
    """Eager, with few sequence slots: no batch size seen later may start a tuning on a request's
    path, so the warm-up has tuned every row class of every layer shape, LM head included."""
    from shardserve.kernels import tuned_gemm

    tuned_gemm._TUNED.clear()
    with LLM(str(tiny_checkpoint("llama")), dtype="bf16", enforce_eager=True, max_num_seqs=2,
             num_kv_blocks=64, max_model_len=256) as llm:
        assert llm.warmup_seconds > 0
        model = llm.executor.runner.model
        shapes = {tuple(m.weight.shape) for m in model.modules()
                  if getattr(m, "weight", None) is not None and m.weight.dim() == 2 and m is not model.model.embed_tokens}
        classes = {key[0] for key in tuned_gemm._TUNED if key[1:3] in shapes}
        assert classes == {1, 2, 4, 8, 16, 32, 64}
        for n, k in shapes:
            assert all((rows, n, k) in {key[:3] for key in tuned_gemm._TUNED} for rows in classes), (n, k)


@pytest.mark.parametrize("arch", ["llama", "opt", "bloom"])
def test_programmatic_dependent_launch_changes_no_token(tiny_checkpoint, arch):
    """extra.pdl (kernels/pdl.py): every decode-path kernel launched early and waiting for its
    predecessor gives the ordinary launches' tokens, under CUDA graphs and eagerly."""
    from shardserve.kernels.pdl import _has_gdc, pdl_args

    hopper = _has_gdc and torch.cuda.get_device_capability() >= (9, 0)
    path = str(tiny_checkpoint(arch))
    prompts = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 53))]
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for n in (24, 9, 17)]
    outs = {}
    for eager in (False, True):
        for pdl in (False, True):
            with LLM(path, dtype="fp16" if arch == "opt" else "bf16", enforce_eager=eager, max_num_seqs=8,
                     num_kv_blocks=64, max_model_len=256, extra={"pdl": pdl}) as llm:
                # The engine (in this process at TP1) really launches that way where it can.
                assert ("launch_pdl" in pdl_args(torch.ones(1, device="cuda"))) == (pdl and hopper)
                outs[eager, pdl] = [o.token_ids for o in llm.generate(prompts, params)]
    assert outs[False, True] == outs[False, False] == outs[True, True] == outs[True, False]
