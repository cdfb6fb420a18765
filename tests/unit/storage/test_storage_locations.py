"""Model locations: local paths, file://, s3://, and models already in the Hugging Face cache."""

from __future__ import annotations

import pytest

from shardserve.errors import StorageError
from shardserve.storage.uri import LocalLocation, S3Location, parse_location


def test_s3_locations():
    assert parse_location("s3://my-bucket/models/opt/") == S3Location("my-bucket", "models/opt")
    assert parse_location("s3://my-bucket") == S3Location("my-bucket", "")
    loc = parse_location(" s3://my-bucket/sm/model.tar.gz ")
    assert loc == S3Location("my-bucket", "sm/model.tar.gz") and loc.is_archive


@pytest.mark.parametrize("text", ["s3://", "s3://UPPER/x", "s3://a/x"])
def test_bad_bucket_names_are_refused(text):
    with pytest.raises(StorageError, match="invalid S3 bucket"):
        parse_location(text)


def test_local_dir_and_file_url(tmp_path):
    assert parse_location(str(tmp_path)) == LocalLocation(tmp_path.resolve())
    assert parse_location(f"file://{tmp_path}") == LocalLocation(tmp_path.resolve())


def test_local_archive_and_plain_file(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"x")
    assert parse_location(str(tmp_path / "model.tar.gz")).is_archive
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(StorageError, match="is a file, not a model directory or an archive"):
        parse_location(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("text", ["", "gs://bucket/x", "https://example.com/model.tar.gz"])
def test_unsupported_locations(text):
    with pytest.raises(StorageError, match="empty|unsupported"):
        parse_location(text)


def _hf_repo(hub, model_id, commits, ref=None):
    repo = hub / ("models--" + model_id.replace("/", "--"))
    for c in commits:
        (repo / "snapshots" / c).mkdir(parents=True)
        (repo / "snapshots" / c / "config.json").write_text("{}")
    if ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(ref + "\n")
    return repo


def test_model_id_found_in_the_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = _hf_repo(tmp_path, "org/tiny", ["aaa", "bbb"], ref="bbb")
    assert parse_location("org/tiny") == LocalLocation(repo / "snapshots" / "bbb")
    # The repo folder itself is a store, not a model: its snapshot is used.
    assert parse_location(str(repo)).path == (repo / "snapshots" / "bbb").resolve()


def test_hf_cache_without_ref_needs_a_single_snapshot(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    _hf_repo(tmp_path / "hub", "solo", ["only"])
    assert parse_location("solo").path.name == "only"
    _hf_repo(tmp_path / "hub", "org/two", ["a", "b"])
    with pytest.raises(StorageError, match="2 snapshots and no usable refs/main"):
        parse_location("org/two")


def test_missing_model_names_the_cache_it_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        StorageError,
        match=f"neither a local path nor a model in the Hugging Face cache \\({tmp_path}",
    ):
        parse_location("org/not-here")
