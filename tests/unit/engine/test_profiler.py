"""LLM.start_profile / stop_profile: every rank writes its trace and op summary."""

import json

import pytest

from shardserve import LLM, SamplingParams

PARAMS = SamplingParams(max_new_tokens=4, temperature=0.0)


def _check_rank_files(out_dir, rank):
    trace = json.loads((out_dir / f"rank{rank}.trace.json").read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any(n.startswith("aten::") for n in names), "the trace holds no torch ops"
    summary = (out_dir / f"rank{rank}.txt").read_text()
    assert "aten::" in summary and "CPU total" in summary


def test_one_rank_profile(llama_llm, tmp_path):
    llama_llm.start_profile(str(tmp_path))
    with pytest.raises(RuntimeError, match="already running"):
        llama_llm.start_profile(str(tmp_path))
    llama_llm.generate("Hello there", PARAMS)
    paths = llama_llm.stop_profile()
    assert sorted(paths) == sorted(str(tmp_path / f) for f in ("rank0.trace.json", "rank0.txt"))
    _check_rank_files(tmp_path, 0)
    with pytest.raises(RuntimeError, match="not running"):
        llama_llm.stop_profile()


def test_every_rank_writes_its_profile(tiny_checkpoint, tmp_path):
    with LLM(str(tiny_checkpoint("llama")), dtype="fp32", tensor_parallel_size=2) as llm:
        llm.start_profile(str(tmp_path))
        llm.generate("Hello there", PARAMS)
        llm.stop_profile()
    for rank in (0, 1):
        _check_rank_files(tmp_path, rank)
