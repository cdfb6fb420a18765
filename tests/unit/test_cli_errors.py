"""Bad input to `shardserve serve`, `partition` and the global flags: a one-line error naming the
flag, exit code 2, no traceback, no half-written output."""

from __future__ import annotations

import pytest

from shardserve.assets import default_model_path
from shardserve.cli import build_parser, main


def _parse_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("flag, value", [
    ("--port", "-1"), ("--port", "99999"), ("--port", "http"),
    ("--drain-timeout", "-5"), ("--drain-timeout", "nan"), ("--drain-timeout", "inf"),
])
def test_serve_refuses_out_of_range_flags(capsys, flag, value):
    line = _parse_error(capsys, ["serve", flag, value])
    assert line.startswith(f"shardserve serve: error: argument {flag}"), line


def test_serve_accepts_edge_values():
    args = build_parser().parse_args(["serve", "--port", "65535", "--drain-timeout", "0"])
    assert args.port == 65535 and args.drain_timeout == 0.0


def test_log_level_is_a_case_insensitive_choice(capsys):
    assert build_parser().parse_args(["--log-level", "WARNING", "serve"]).log_level == "warning"
    line = _parse_error(capsys, ["--log-level", "bogus", "generate", "hi"])
    assert "--log-level" in line and "bogus" in line, line


def test_partition_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "sub"
    argv = ["partition", "--model", str(default_model_path()), "--tp", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardserve partition: error: --out") and err.count("\n") == 1, err


def test_failed_partition_removes_the_parents_it_created(tmp_path, monkeypatch):
    from shardserve.weights import partition as module

    def fail_midway(config, model_dir, out_dir, *args):
        (out_dir / "rank-00000-of-00001.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_write", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        module.partition(default_model_path(), tmp_path / "new" / "deeper" / "tp1", 1)
    assert list(tmp_path.iterdir()) == []


def test_failed_partition_keeps_an_existing_empty_out_dir(tmp_path, monkeypatch):
    from shardserve.weights import partition as module

    def fail_midway(config, model_dir, out_dir, *args):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_write", fail_midway)
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError):
        module.partition(default_model_path(), tmp_path / "out", 1)
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir()) == []
