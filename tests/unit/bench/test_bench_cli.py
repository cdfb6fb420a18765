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


def test_a_batch_past_64_sequences_runs_in_one_wave(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """The baseline generates the whole batch at once: our engine must take it whole too."""
    import shardserve

    seen = []
    real_llm = shardserve.LLM

    def recording_llm(*args, config, **kwargs):
        seen.append(config.max_num_seqs)
        return real_llm(*args, config=config, **kwargs)

    monkeypatch.setattr(shardserve, "LLM", recording_llm)
    code = main(["bench", "--model", str(tiny_checkpoint("llama")), "--random-weights", "--batch", "70",
                 "--prompt-len", "4", "--new-tokens", "2", "--reps", "1", "--engines", "tp", "--check-tokens", "0",
                 "--dtype", "fp32", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    assert seen == [70]


@pytest.mark.parametrize("random_weights", [False, True])
def test_each_engine_loads_a_real_checkpoint_cold(tiny_checkpoint, tmp_path, capsys, monkeypatch, random_weights):
    """The baseline reads the files first; our engine must not load them from its page cache."""
    from shardserve.bench import accelerate_baseline, latency, page_cache

    path = tiny_checkpoint("llama")
    events = []
    monkeypatch.setattr(page_cache, "evict", lambda model_dir: events.append(("evict", str(model_dir))))
    real_bench_ours = latency._bench_ours
    monkeypatch.setattr(latency, "_bench_ours", lambda *a: events.append(("ours",)) or real_bench_ours(*a))
    real_init = accelerate_baseline.AccelerateBaseline.__init__

    def init(self, *a, **kw):  # latency.py imports the class where it uses it: patched on the class
        events.append(("baseline",))
        real_init(self, *a, **kw)

    monkeypatch.setattr(accelerate_baseline.AccelerateBaseline, "__init__", init)
    code = main(["bench", "--model", str(path), *(["--random-weights"] if random_weights else []), "--batch", "2",
                 "--prompt-len", "4", "--new-tokens", "2", "--reps", "1", "--baseline-reps", "1",
                 "--check-tokens", "2", "--dtype", "fp32", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    if random_weights:  # nothing read from disk: nothing to evict
        assert events == [("baseline",), ("ours",)]
    else:
        assert events == [("evict", str(path)), ("baseline",), ("evict", str(path)), ("ours",)]
