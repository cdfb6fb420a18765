"""`shardserve bench` end to end on a tiny model (CPU): same random weights in both engines,
correctness against transformers printed, table and JSON written."""

from __future__ import annotations

import json

import pytest

from shardserve.bench.commands import parse_engine_options
from shardserve.cli import build_parser, main


def test_engine_options_parse_types_and_extra():
    assert parse_engine_options(["enforce_eager=true", "extra.fast_all_reduce=false", "max_num_seqs=8"]) == {
        "enforce_eager": True, "extra": {"fast_all_reduce": False}, "max_num_seqs": 8,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_engine_options(["oops"])


def test_bench_parser_registered():
    args = build_parser().parse_args(["bench", "--model", "opt-30b", "--random-weights", "--tp", "4"])
    assert args.tp == 4 and args.engines == "tp,accelerate"


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_bench_runs_both_engines_on_the_same_weights(tiny_checkpoint, tmp_path, capsys, arch):
    path = tiny_checkpoint(arch)
    code = main(["bench", "--model", str(path), "--random-weights", "--batch", "2", "--prompt-len", "6",
                 "--new-tokens", "3", "--reps", "1", "--baseline-reps", "1", "--check-tokens", "4",
                 "--dtype", "fp32", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS min cosine 1.00000" in out and "greedy agree 4/4" in out
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [r["engine"] for r in report["results"]] == ["tp", "accelerate"]
    assert report["context"]["correctness"]["tp"]["argmax_agree"] == 1.0


def test_catalog_name_needs_random_weights(capsys):
    assert main(["bench", "--model", "opt-125m"]) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_bench_profiles_our_engine_when_asked(tiny_checkpoint, tmp_path, capsys):
    code = main(["bench", "--model", str(tiny_checkpoint("llama")), "--random-weights", "--batch", "2",
                 "--prompt-len", "6", "--new-tokens", "3", "--reps", "1", "--engines", "tp", "--check-tokens", "0",
                 "--dtype", "fp32", "--out", str(tmp_path / "out"), "--profile", str(tmp_path / "prof")])
    assert code == 0, capsys.readouterr().out
    assert "aten::" in (tmp_path / "prof" / "tp" / "rank0.txt").read_text()
    assert (tmp_path / "prof" / "tp" / "rank0.trace.json").stat().st_size > 0
