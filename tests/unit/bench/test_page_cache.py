"""bench/page_cache.py: every file of a checkpoint directory, nested ones too, is evicted."""

import os

from shardserve.bench import page_cache


def test_evict_takes_every_file_under_the_directory(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 4096)
    (tmp_path / "rank-0").mkdir()
    (tmp_path / "rank-0" / "weights.safetensors").write_bytes(b"y" * 4096)
    advised = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: advised.append(advice) or real(fd, off, n, advice))
    assert page_cache.evict(tmp_path) == 2
    assert advised == [os.POSIX_FADV_DONTNEED] * 2
