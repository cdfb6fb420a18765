"""Safe unpacking: good archives unpack exactly; every malicious one is refused with nothing
written outside the target (and the target itself removed)."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from shardserve.errors import StorageError
from shardserve.storage.archive import unpack


def _tar(path, members, mode="w:gz"):
    """members: (name, kind, payload) with kind file | dir | symlink | hardlink | chr | fifo."""
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, mode) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload or ""
                tf.addfile(info)
    return path


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            elif kind == "fifo":
                info.external_attr = (stat.S_IFIFO | 0o644) << 16
            zf.writestr(info, payload)
    return path


@pytest.fixture
def place(tmp_path):
    """(archive dir, target, outside): `outside` must stay empty whatever the archive says."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "in").mkdir()
    return tmp_path / "in", tmp_path / "in" / "target", outside


def test_good_tar_gz_unpacks_files_dirs_links(place):
    src, target, _ = place
    archive = _tar(
        src / "model.tar.gz",
        [
            ("./", "dir", None),
            ("./code/", "dir", None),
            ("./code/serving.properties", "file", b"engine=Python\n"),
            ("./code/model.py", "file", b"def handle(x): pass\n"),
            ("./weights.bin", "file", b"\x00\x01" * 1000),
            ("./latest", "symlink", "code/model.py"),
            ("./code/copy.py", "hardlink", "./code/model.py"),
        ],
    )
    files = unpack(archive, target)
    assert (target / "code" / "serving.properties").read_bytes() == b"engine=Python\n"
    assert (target / "latest").read_bytes() == b"def handle(x): pass\n"
    assert (target / "code" / "copy.py").read_bytes() == b"def handle(x): pass\n"
    assert files["weights.bin"] == {"size": 2000}
    assert "latest" not in files  # links are not files of the manifest


@pytest.mark.parametrize("mode", ["w", "w:bz2", "w:xz"])
def test_other_tar_compressions(place, mode):
    src, target, _ = place
    unpack(_tar(src / "model.tar", [("a/b.txt", "file", b"hi")], mode), target)
    assert (target / "a" / "b.txt").read_bytes() == b"hi"


def test_good_zip(place):
    src, target, _ = place
    unpack(
        _zip(
            src / "m.zip",
            [("dir/", "file", b""), ("dir/x.json", "file", b"{}"), ("y", "file", b"1")],
        ),
        target,
    )
    assert (target / "dir" / "x.json").read_bytes() == b"{}" and (target / "y").read_bytes() == b"1"


def _malicious_tars(outside):
    return {
        "absolute path": [(str(outside / "evil"), "file", b"x")],
        "dot-dot": [("../outside/evil", "file", b"x")],
        "dot-dot inside": [("a/../../outside/evil", "file", b"x")],
        "absolute symlink": [("lnk", "symlink", str(outside))],
        "absolute symlink, then a file through it": [
            ("lnk", "symlink", str(outside)),
            ("lnk/evil", "file", b"x"),
        ],
        "relative symlink out": [("lnk", "symlink", "../outside")],
        "symlink redirected by a later one": [("a", "symlink", "b/.."), ("b", "symlink", ".")],
        "link through a link": [
            ("b", "symlink", "."),
            ("a", "symlink", "b/.."),
            ("a/evil", "symlink", "x"),
        ],
        "hardlink absolute": [("h", "hardlink", "/etc/passwd")],
        "hardlink out": [("h", "hardlink", "../outside/secret")],
        "character device": [("dev", "chr", None)],
        "fifo": [("pipe", "fifo", None)],
    }


@pytest.mark.parametrize("case", list(_malicious_tars(Path("/x"))))
def test_malicious_tar_is_refused(place, case):
    src, target, outside = place
    archive = _tar(src / "bad.tar.gz", _malicious_tars(outside)[case])
    with pytest.raises(StorageError, match="refused"):
        unpack(archive, target)
    assert not target.exists() and os.listdir(outside) == []


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", "file", b"x")],
        [("/evil", "file", b"x")],
        [("lnk", "symlink", "../../outside")],
        [("pipe", "fifo", b"")],
    ],
    ids=["dot-dot", "absolute", "symlink out", "fifo"],
)
def test_malicious_zip_is_refused(place, members):
    src, target, outside = place
    with pytest.raises(StorageError, match="refused"):
        unpack(_zip(src / "bad.zip", members), target)
    assert not target.exists() and os.listdir(outside) == []


def test_caps_on_entries_and_bytes(place):
    src, target, _ = place
    many = _tar(src / "many.tar", [(f"f{i}", "file", b"x") for i in range(5)], "w")
    with pytest.raises(StorageError, match="more than 3 entries"):
        unpack(many, target, max_files=3)
    big = _zip(src / "big.zip", [("a", "file", b"0" * 60), ("b", "file", b"0" * 60)])
    with pytest.raises(StorageError, match="more than 100 bytes"):
        unpack(big, target, max_bytes=100)
    assert not target.exists()


def test_not_an_archive(place):
    src, target, _ = place
    (src / "fake.tar.gz").write_bytes(b"certainly not gzip data")
    with pytest.raises(StorageError, match="neither a tar nor a zip"):
        unpack(src / "fake.tar.gz", target)
    assert not target.exists()


def _random_model(src: Path) -> tuple[Path, dict[str, bytes]]:
    """A tar.gz of random files, the last big enough that the middle of the stream is its data."""
    rng = random.Random(1234)
    contents = {"config.json": rng.randbytes(300), "tokenizer.json": rng.randbytes(5000)}
    contents["model.safetensors"] = rng.randbytes(400_000)
    members = [(name, "file", data) for name, data in contents.items()]
    return _tar(src / "model.tar.gz", members), contents


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["member data", "crc trailer", "length trailer"])
def test_corrupted_tar_gz_is_refused(place, where):
    # tarfile stops at the end-of-archive blocks; only reading on to the gzip trailer makes
    # the CRC check run, and random data is stored by deflate as is, so nothing else notices.
    src, target, _ = place
    archive, _ = _random_model(src)
    size = archive.stat().st_size
    _flip_bit(archive, {"member data": size // 2, "crc trailer": size - 6}.get(where, size - 2))
    with pytest.raises(StorageError, match=f"archive {archive} is damaged"):
        unpack(archive, target)
    assert not target.exists()


def test_good_tar_gz_unpacks_identically(place):
    src, target, _ = place
    archive, contents = _random_model(src)
    files = unpack(archive, target)
    assert files == {name: {"size": len(data)} for name, data in contents.items()}
    assert all((target / name).read_bytes() == data for name, data in contents.items())


@pytest.mark.parametrize("mode", ["w:bz2", "w:xz"])
def test_corrupted_bz2_and_xz_tars_are_refused(place, mode):
    src, target, _ = place
    archive = _tar(src / "model.tar", [("a.bin", "file", random.Random(5).randbytes(50_000))], mode)
    _flip_bit(archive, archive.stat().st_size - 6)  # in the stream's trailer / last block
    with pytest.raises(StorageError, match=f"archive {archive} is damaged"):
        unpack(archive, target)
    assert not target.exists()
