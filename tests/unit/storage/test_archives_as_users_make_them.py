"""Model archives as users make them: cut short, packed one directory down, or packed from a
directory that an earlier download left its DONE marker in."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from shardserve.errors import StorageError
from shardserve.serving.model_store import ModelStore
from shardserve.storage.archive import unpack
from shardserve.storage.fetch import fetch_model
from shardserve.storage.once import DONE_NAME, done_manifest

HANDLER = "def handle(inputs):\n    return None\n"


def _tar(path, files: dict[str, bytes], mode: str = "w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _member_offsets(path) -> list[int]:
    with tarfile.open(path) as tf:
        return [m.offset for m in tf]


FILES = {"config.json": b"{}", "model.safetensors": b"w" * 3000, "tokenizer.json": b"t" * 700}


@pytest.mark.parametrize("cut", ["at_a_member", "inside_a_header", "damaged_header"])
def test_an_uncompressed_tar_cut_between_members_is_refused(tmp_path, cut):
    """tarfile ends quietly where the file ends or a header is short: the first members
    unpacked as a whole model (the last file, here tokenizer.json, simply missing)."""
    whole = _tar(tmp_path / "whole.tar", FILES, mode="w:")
    data, last = whole.read_bytes(), _member_offsets(whole)[-1]
    end = {"at_a_member": last, "inside_a_header": last + 100, "damaged_header": last}[cut]
    if cut == "damaged_header":  # a damaged header where the last member starts
        cut_data = data[:last] + b"\xff" * 512 + data[last + 512:]
    else:
        cut_data = data[:end]
    (tmp_path / "cut.tar").write_bytes(cut_data)
    with pytest.raises(StorageError, match="end-of-archive"):
        unpack(tmp_path / "cut.tar", tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_a_gzipped_tar_that_was_cut_before_compression_is_refused(tmp_path):
    """The gzip trailer is intact, so only the missing end-of-archive blocks tell."""
    import gzip

    whole = _tar(tmp_path / "whole.tar", FILES, mode="w:")
    cut = whole.read_bytes()[:_member_offsets(whole)[-1]]
    (tmp_path / "cut.tar.gz").write_bytes(gzip.compress(cut))
    with pytest.raises(StorageError, match="end-of-archive"):
        unpack(tmp_path / "cut.tar.gz", tmp_path / "target")


@pytest.mark.parametrize("mode", ["w:", "w:gz", "w:bz2", "w:xz"])
def test_whole_tars_still_unpack(tmp_path, mode):
    _tar(tmp_path / "m.tar", FILES, mode=mode)
    assert set(unpack(tmp_path / "m.tar", tmp_path / "target")) == set(FILES)


def test_an_empty_tar_still_unpacks(tmp_path):
    """An artifact with no files is how an environment-only model (HF_MODEL_ID, OPTION_*)
    can be deployed: the weights come from option.model_id."""
    _tar(tmp_path / "empty.tar.gz", {})
    assert unpack(tmp_path / "empty.tar.gz", tmp_path / "target") == {}


def test_an_archive_packed_from_a_finished_download_is_complete_every_time(tmp_path):
    """It carries the DONE marker of that download. Ours overwrote it while the manifest listed
    it with its old size, so the entry never counted as complete: a second `download --to`
    refused the directory, and every start deleted and unpacked the cache entry again."""
    first = fetch_model(str(_tar(tmp_path / "m.tar.gz", FILES)), cache_dir=tmp_path / "cache")
    repacked = {**FILES, DONE_NAME: (first / DONE_NAME).read_bytes(), "extra.txt": b"x"}
    archive = _tar(tmp_path / "repacked.tar.gz", repacked)
    dest = tmp_path / "out"
    assert fetch_model(str(archive), dest=dest, progress=False) == dest
    manifest = done_manifest(dest)
    assert manifest is not None and DONE_NAME not in manifest["files"]
    assert json.loads((dest / DONE_NAME).read_text())["location"] == str(archive)
    assert fetch_model(str(archive), dest=dest, progress=False) == dest  # used, not refused


def test_files_packed_one_directory_down_are_the_model(tmp_path, monkeypatch):
    """`tar -czf model.tar.gz mymodel/`: DJLServing serves the lone subdirectory; here the
    artifact root had no serving.properties, model.py or config.json."""
    archive = _tar(tmp_path / "model.tar.gz", {
        "mymodel/serving.properties": b"engine=Python\noption.greeting=hi\n",
        "mymodel/model.py": HANDLER.encode(),
    })
    found = fetch_model(str(archive), cache_dir=tmp_path / "cache", progress=False)
    assert found.name == "mymodel" and (found / "model.py").is_file()
    assert fetch_model(str(archive), cache_dir=tmp_path / "cache", progress=False) == found
    monkeypatch.setenv("SERVING_DOWNLOAD_DIR", str(tmp_path / "cache"))
    model = ModelStore(environ={}).add("m", str(archive), wait=True)
    assert model.ready, model.error


def test_a_directory_beside_files_or_other_directories_is_not_descended_into(tmp_path):
    both = _tar(tmp_path / "a.tar.gz", {"code/model.py": b"", "serving.properties": b""})
    two = _tar(tmp_path / "b.tar.gz", {"one/x": b"", "two/y": b""})
    for archive in (both, two):
        found = fetch_model(str(archive), cache_dir=tmp_path / "cache", progress=False)
        assert (found / DONE_NAME).is_file()  # the cache entry itself


def test_a_file_url_with_a_host_is_refused_not_read_as_another_path(tmp_path, monkeypatch):
    """file://models/llama was read as /llama: the first path part, taken for a host, dropped."""
    from shardserve.storage.uri import parse_location

    (tmp_path / "llama").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="names host 'models': write file:///PATH"):
        parse_location(f"file://models{tmp_path}/llama")
    assert parse_location(f"file://localhost{tmp_path}/llama").path == tmp_path / "llama"


@pytest.mark.parametrize("text", ["s3:/bucket/model", "s3:bucket/model", "S3:/bucket"])
def test_a_mistyped_s3_uri_is_named_as_one(text):
    """It was reported as a local path or Hugging Face model id that does not exist."""
    from shardserve.storage.uri import parse_location

    with pytest.raises(StorageError, match="malformed S3 location .*: write s3://bucket/prefix"):
        parse_location(text)


def test_a_key_that_is_also_a_directory_of_another_is_refused_when_listed():
    """S3 holds "m/a" and "m/a/b" side by side; a directory cannot: the download failed only
    after fetching every other object, and again at each retry."""
    from shardserve.storage import s3
    from shardserve.storage.uri import S3Location

    class Listing:
        def get_paginator(self, name):
            return self

        def paginate(self, **_):
            keys = ["m/config.json", "m/a", "m/a/b.bin"]
            return [{"Contents": [{"Key": k, "Size": 1, "ETag": '"e"'} for k in keys]}]

    with pytest.raises(StorageError, match="'m/a' is a file, but 'm/a/b.bin' needs it as a directory"):
        s3.list_objects(Listing(), S3Location("bucket", "m"))


def test_an_s3_model_synced_from_a_finished_download_is_complete_every_time(put_model, tmp_path):
    """`aws s3 sync` of a downloaded directory uploads its DONE marker along with the model."""
    marker = json.dumps({"format": 1, "files": {"config.json": {"size": 2}}}).encode()
    bucket = put_model({"config.json": b"{}", "w.bin": b"w" * 1000, DONE_NAME: marker})
    dest = tmp_path / "out"
    for _ in range(2):
        assert fetch_model(f"s3://{bucket}/model", dest=dest, progress=False) == dest
    assert DONE_NAME not in done_manifest(dest)["files"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([DONE_NAME, "config.json", "w.bin"])


def test_a_lone_code_directory_stays_where_sagemaker_puts_it(tmp_path):
    archive = _tar(tmp_path / "model.tar.gz", {"code/model.py": HANDLER.encode()})
    found = fetch_model(str(archive), cache_dir=tmp_path / "cache", progress=False)
    assert (found / "code" / "model.py").is_file()
