"""fetch_model of a local archive: unpacked once into the cache, again when the file changes,
and never when it is damaged."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from shardserve.errors import StorageError
from shardserve.storage import archive as archive_module
from shardserve.storage.fetch import fetch_model


def _write_tar_gz(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def unpacks(monkeypatch) -> list:
    """The archives fetch_model unpacks, in order."""
    calls = []
    original = archive_module.unpack

    def counting(archive, target, **kw):
        calls.append(archive)
        return original(archive, target, **kw)

    monkeypatch.setattr(archive_module, "unpack", counting)
    return calls


def test_rebuilt_archive_is_unpacked_again_and_an_unchanged_one_reused(tmp_path, unpacks):
    model, cache = tmp_path / "model.tar.gz", tmp_path / "cache"
    _write_tar_gz(model, {"weights.bin": b"old weights", "serving.properties": b"engine=Python\n"})
    first = fetch_model(str(model), cache_dir=cache, progress=False)
    assert (first / "weights.bin").read_bytes() == b"old weights"

    _write_tar_gz(model, {"weights.bin": b"new weights, retrained", "extra.txt": b"x"})
    second = fetch_model(str(model), cache_dir=cache, progress=False)
    assert (second / "weights.bin").read_bytes() == b"new weights, retrained"
    assert not (second / "serving.properties").exists()  # nothing of the old tree is left
    assert len(unpacks) == 2

    third = fetch_model(str(model), cache_dir=cache, progress=False)
    assert third == second and len(unpacks) == 2  # unchanged: reused, not unpacked again


def test_damaged_archive_leaves_no_cache_entry(tmp_path):
    model, cache = tmp_path / "model.tar.gz", tmp_path / "cache"
    _write_tar_gz(model, {"weights.bin": random.Random(3).randbytes(200_000)})
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=f"archive .*{model.name} is damaged"):
        fetch_model(str(model), cache_dir=cache, progress=False)
    assert [p for p in cache.iterdir() if not p.name.endswith((".lock", ".partial"))] == []
    assert all(not any(p.iterdir()) for p in cache.glob("*.partial"))
