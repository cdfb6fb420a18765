"""Once per host: concurrent processes share one download; a killed one is resumed."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from shardserve.errors import StorageError
from shardserve.storage import once
from shardserve.storage.deadline import Deadline
from shardserve.storage.fetch import fetch_model

MiB = 1 << 20
WORKER = Path(__file__).with_name("fetch_worker.py")
FILES = {"config.json": b"{}", "model.safetensors": random.Random(3).randbytes(6 * MiB)}
RANGES = sum(math.ceil(len(d) / MiB) for d in FILES.values())


def _start(s3env, location, cache, *extra):
    env = {**os.environ, **s3env.env()}
    return subprocess.Popen(
        [sys.executable, str(WORKER), location, str(cache), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def test_four_processes_download_once_and_share_the_directory(put_model, s3env, tmp_path):
    bucket = put_model(FILES)
    procs = [_start(s3env, f"s3://{bucket}/model", tmp_path) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert len({r["path"] for r in results}) == 1
    assert sorted(len(r["gets"]) for r in results) == [0, 0, 0, RANGES]  # exactly one downloaded
    path = Path(results[0]["path"])
    assert all((path / n).read_bytes() == d for n, d in FILES.items())


def test_download_killed_midway_is_resumed_with_correct_bytes(put_model, s3env, tmp_path, gets):
    bucket = put_model(FILES)
    proc = _start(s3env, f"s3://{bucket}/model", tmp_path, "--kill-after-ranges", "3")
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    assert list(tmp_path.glob("*.partial")) and not [
        p for p in tmp_path.iterdir() if p.suffix == ""
    ]
    path = fetch_model(f"s3://{bucket}/model", cache_dir=tmp_path, part_size=MiB, progress=False)
    assert all((path / n).read_bytes() == d for n, d in FILES.items())
    assert len(gets) == RANGES - 3  # the journaled ranges were not fetched again
    assert not list(tmp_path.glob("*.partial"))


def _ensure(dest: Path, calls: list, *, owned=True, location="s3://b/m", content=b"data"):
    def build(work: Path):
        calls.append(work)
        (work / "tree").mkdir(exist_ok=True)
        (work / "tree" / "f").write_bytes(content)
        return work / "tree", {"files": {"f": {"size": len(content)}}}

    identity = {"location": location}
    return once.ensure(
        dest, build, deadline=Deadline(None), what=location, owned=owned, identity=identity
    )


def test_kill_between_the_rename_and_the_done_marker_is_finished_next_time(tmp_path, monkeypatch):
    dest, calls = tmp_path / "entry", []
    monkeypatch.setattr(once, "_publish", lambda dest: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _ensure(dest, calls)
    assert dest.is_dir() and once.done_manifest(dest) is None
    monkeypatch.undo()
    assert _ensure(dest, calls) == dest
    assert len(calls) == 1 and once.done_manifest(dest)["files"] == {"f": {"size": 4}}


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    calls = []
    dest = _ensure(tmp_path / "entry", calls)
    (dest / "f").write_bytes(b"truncated!")  # its size no longer matches the DONE manifest
    _ensure(dest, calls)
    assert len(calls) == 2 and (dest / "f").read_bytes() == b"data"
    _ensure(dest, calls, location="s3://b/other", content=b"other")  # another model: rebuilt
    assert len(calls) == 3 and (dest / "f").read_bytes() == b"other"


def test_a_user_directory_is_never_deleted(tmp_path):
    calls = []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(StorageError, match="already exists and is not a complete download of this"):
        _ensure(mine, calls, owned=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    done = _ensure(tmp_path / "out", calls, owned=False)
    with pytest.raises(StorageError, match="already exists and is not a complete download of this"):
        _ensure(done, calls, owned=False, location="s3://b/other")
    assert (done / "f").read_bytes() == b"data"
