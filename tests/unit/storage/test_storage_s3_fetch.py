"""fetch_model against a real S3 server (SeaweedFS): bytes, checksums, resume and every failure."""

from __future__ import annotations

import fcntl
import json
import math
import random

import pytest

from shardserve.errors import StorageError
from shardserve.storage import transfer
from shardserve.storage.exceptions import DownloadTimeout
from shardserve.storage.fetch import fetch_model
from shardserve.storage.manifest import MANIFEST
from shardserve.storage.once import DONE_NAME

MiB = 1 << 20
RNG = random.Random(0)
# 6.5 MiB: two multipart parts (5 + 1.5 MiB), seven 1 MiB ranged GETs.
MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": RNG.randbytes(13 * MiB // 2),
    "tokenizer/tokenizer.json": RNG.randbytes(300_000),
    "empty.txt": b"",
}


def fetch(location, cache, **kw):
    return fetch_model(
        location, cache_dir=cache, part_size=MiB, progress=False, concurrency=4, **kw
    )


def ranges(files) -> int:
    return sum(math.ceil(len(data) / MiB) for data in files.values())


def assert_nothing_left(cache):
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []


@pytest.mark.parametrize("checksum", ["CRC32", "SHA256", None])
def test_multi_file_model_is_byte_identical_and_verified(put_model, gets, tmp_path, checksum):
    bucket = put_model(MODEL, checksum=checksum)
    path = fetch(f"s3://{bucket}/model", tmp_path)
    for name, data in MODEL.items():
        assert (path / name).read_bytes() == data, name
    assert len(gets) == ranges(MODEL)  # ranged GETs of 1 MiB; nothing fetched twice
    assert all(r.startswith("bytes=") for _, r in gets)
    done = json.loads((path / DONE_NAME).read_text())
    expected = {"CRC32": "S3 ChecksumCRC32", "SHA256": "S3 ChecksumSHA256", None: "ETag (MD5)"}[
        checksum
    ]
    assert {f["verified"] for f in done["files"].values()} == {expected}
    assert done["files"]["model.safetensors"]["etag"].endswith("-2")  # multipart: composite checks
    assert fetch(f"s3://{bucket}/model/", tmp_path) == path and len(gets) == ranges(MODEL)  # cached


def test_sagemaker_archive_is_downloaded_and_unpacked(put_model, tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {
            "serving.properties": b"engine=Python\n",
            "model.py": b"x = 1\n",
        }.items():
            info = tarfile.TarInfo(f"code/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    bucket = put_model({"model.tar.gz": buf.getvalue()}, prefix="sm/")
    path = fetch(f"s3://{bucket}/sm/model.tar.gz", tmp_path)
    assert (path / "code" / "serving.properties").read_bytes() == b"engine=Python\n"
    assert not (path / "model.tar.gz").exists()


def _manifest(files, corrupt=None):
    import hashlib

    entries = [
        {
            "rank": rank,
            "name": name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data + (b"!" if name == corrupt else b"")).hexdigest(),
        }
        for rank, (name, data) in enumerate(files.items())
    ]
    return json.dumps({"format": "shardserve-presharded", "files": entries}).encode()


def test_partition_manifest_sha256_is_checked(put_model, tmp_path):
    files = {"rank0.safetensors": RNG.randbytes(2 * MiB), "rank1.safetensors": RNG.randbytes(MiB)}
    bucket = put_model({**files, MANIFEST: _manifest(files)})
    done = json.loads((fetch(f"s3://{bucket}/model", tmp_path) / DONE_NAME).read_text())
    assert done["files"]["rank0.safetensors"]["verified"] == "sha256 in the partition manifest"


def test_wrong_manifest_sha256_is_refused_and_nothing_left(put_model, tmp_path):
    files = {"rank0.safetensors": RNG.randbytes(2 * MiB), "rank1.safetensors": RNG.randbytes(MiB)}
    bucket = put_model({**files, MANIFEST: _manifest(files, corrupt="rank1.safetensors")})
    with pytest.raises(
        StorageError, match=r"model/rank1.safetensors: the downloaded bytes do not match its sha256"
    ):
        fetch(f"s3://{bucket}/model", tmp_path)
    assert_nothing_left(tmp_path)


def test_bytes_corrupted_in_transit_are_refused(put_model, tmp_path, monkeypatch):
    bucket = put_model(MODEL)
    real_pwrite = transfer.os.pwrite
    flipped = []

    def flip_once(fd, data, offset):
        if not flipped and len(data) > 100:
            flipped.append(offset)
            data = bytes(data[:100]) + bytes([data[100] ^ 1]) + bytes(data[101:])
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(transfer.os, "pwrite", flip_once)
    with pytest.raises(StorageError, match=r"do not match its S3 ChecksumCRC32 \(expected"):
        fetch(f"s3://{bucket}/model", tmp_path)
    assert_nothing_left(tmp_path)


def _on_client_event(monkeypatch, event, handler):
    from shardserve.storage import s3

    original = s3.make_client

    def make_client(*args, **kwargs):
        client = original(*args, **kwargs)
        client.meta.events.register(event, handler)
        return client

    monkeypatch.setattr(s3, "make_client", make_client)


def test_object_changed_after_listing_is_refused(put_model, s3env, tmp_path, monkeypatch):
    bucket = put_model(MODEL)
    _on_client_event(
        monkeypatch,
        "after-call.s3.ListObjectsV2",
        lambda **_: s3env.client().put_object(Bucket=bucket, Key="model/config.json", Body=b"{}"),
    )
    with pytest.raises(StorageError, match="model/config.json changed after it was listed"):
        fetch(f"s3://{bucket}/model", tmp_path)
    assert_nothing_left(tmp_path)


def test_object_changed_during_download_is_refused(put_model, s3env, tmp_path, monkeypatch):
    bucket = put_model(MODEL)
    replaced = []

    def replace_after_first_get(params, **_):
        if params["Key"] == "model/model.safetensors" and not replaced:
            replaced.append(True)
            s3env.client().put_object(Bucket=bucket, Key=params["Key"], Body=b"new version")

    _on_client_event(monkeypatch, "before-parameter-build.s3.GetObject", replace_after_first_get)
    with pytest.raises(
        StorageError, match="model.safetensors changed on the server during the download"
    ):
        fetch(f"s3://{bucket}/model", tmp_path)
    assert_nothing_left(tmp_path)


def test_connection_cut_mid_body_is_resumed_from_the_last_byte(
    put_model, tmp_path, monkeypatch, gets
):
    from urllib3.exceptions import ProtocolError
    from urllib3.response import HTTPResponse

    bucket = put_model(MODEL)
    real_readinto = HTTPResponse.readinto
    reads: dict[HTTPResponse, int] = {}  # readinto calls per response (kept: no id reuse)
    cut = []

    def readinto_then_cut(self, buffer):
        reads[self] = reads.get(self, 0) + 1
        whole_range = int(self.headers.get("Content-Length", 0)) == MiB  # more than 64 KiB left
        if reads[self] == 2 and whole_range and not cut:  # its first 64 KiB have landed
            cut.append(True)
            raise ProtocolError("Connection broken: ConnectionResetError(104, 'reset by peer')")
        return real_readinto(self, buffer[: 64 * 1024])

    monkeypatch.setattr(HTTPResponse, "readinto", readinto_then_cut)
    path = fetch(f"s3://{bucket}/model", tmp_path)
    assert cut and (path / "model.safetensors").read_bytes() == MODEL["model.safetensors"]
    assert len(gets) == ranges(MODEL) + 1  # one extra GET, for the rest of the cut range
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for _, r in gets]
    assert [s % MiB for s in starts if s % MiB] == [64 * 1024]  # it starts at the cut byte


def test_throttling_and_server_errors_are_retried(put_model, tmp_path, monkeypatch, gets):
    from botocore.awsrequest import AWSResponse

    class Raw:
        def __init__(self, body):
            self.body = body

        def stream(self, **_):
            yield self.body

    errors = [(503, "SlowDown"), (500, "InternalError")]  # the first two GETs fail once each
    served = []

    def fail(request, **_):
        if not errors:
            return None
        status, code = errors.pop(0)
        served.append(status)
        body = f"<Error><Code>{code}</Code><Message>try again</Message></Error>".encode()
        return AWSResponse(request.url, status, {}, Raw(body))

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    bucket = put_model(MODEL)
    _on_client_event(monkeypatch, "before-send.s3.GetObject", fail)
    path = fetch(f"s3://{bucket}/model", tmp_path)
    assert served == [503, 500]
    assert all((path / n).read_bytes() == d for n, d in MODEL.items())
    assert len(gets) == ranges(MODEL)  # botocore retried below our GET calls


def test_missing_bucket(s3env, tmp_path):
    with pytest.raises(
        StorageError, match="listing s3://no-such-bucket-here/m: the bucket does not exist"
    ):
        fetch("s3://no-such-bucket-here/m", tmp_path)


def test_empty_prefix(put_model, tmp_path):
    bucket = put_model({"a.bin": b"x"})
    with pytest.raises(
        StorageError, match=f"s3://{bucket}/nothing is empty: no objects under prefix 'nothing/'"
    ):
        fetch(f"s3://{bucket}/nothing", tmp_path)


def test_keys_that_would_share_a_file_are_refused():
    # SeaweedFS normalises "a//b" itself, so a stub listing stands in for a store that does not.
    from shardserve.storage import s3
    from shardserve.storage.uri import S3Location

    class Listing:
        def get_paginator(self, name):
            return self

        def paginate(self, **_):
            keys = ["m/a/b.bin", "m/a//b.bin"]
            return [{"Contents": [{"Key": k, "Size": 1, "ETag": '"e"'} for k in keys]}]

    with pytest.raises(StorageError, match="'m/a/b.bin' and 'm/a//b.bin' map to the same file"):
        s3.list_objects(Listing(), S3Location("bucket", "m"))


def test_missing_single_object(put_model, tmp_path):
    bucket = put_model({"a.bin": b"x"})
    with pytest.raises(StorageError, match="is empty"):
        fetch(f"s3://{bucket}/model/model.tar.gz", tmp_path)


def test_wrong_credentials(put_model, tmp_path, monkeypatch):
    bucket = put_model({"a.bin": b"x"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(
        StorageError, match=r"access denied to listing s3://.*SignatureDoesNotMatch"
    ):
        fetch(f"s3://{bucket}/model", tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    with pytest.raises(StorageError, match=r"access denied .*InvalidAccessKeyId"):
        fetch(f"s3://{bucket}/model", tmp_path)


def test_no_credentials(s3env, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no AWS credentials to read listing s3://some-bucket/m"):
        fetch("s3://some-bucket/m", tmp_path)


def test_unreachable_endpoint(s3env, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(
        StorageError, match=r"cannot reach S3 for listing s3://some-bucket/m after 1 attempts"
    ):
        fetch("s3://some-bucket/m", tmp_path, endpoint_url=f"http://127.0.0.1:{port}")


def test_not_enough_disk_fails_before_any_get(put_model, tmp_path, monkeypatch, gets):
    from shardserve.storage import disk

    bucket = put_model(MODEL)
    monkeypatch.setattr(disk, "free_bytes", lambda path: 5 * MiB)
    total = sum(len(d) for d in MODEL.values())
    with pytest.raises(
        StorageError,
        match=rf"not enough disk space .* needs .* \({total} bytes\), .* \({5 * MiB} bytes\) available",
    ):
        fetch(f"s3://{bucket}/model", tmp_path)
    assert gets == []


def test_timeout_keeps_the_partial_download_for_the_next_start(
    put_model, tmp_path, monkeypatch, gets
):
    import time

    bucket = put_model(MODEL)
    stall = [True]  # after 3 quick GETs, the store "stalls" until the time budget is spent

    def slow(**_):
        if stall[0] and len(gets) > 3:
            time.sleep(1.5)

    _on_client_event(monkeypatch, "before-parameter-build.s3.GetObject", slow)
    with pytest.raises(
        DownloadTimeout,
        match=r"download of s3://.* did not finish within 1 s .*model_loading_timeout",
    ):
        fetch(f"s3://{bucket}/model", tmp_path, timeout_s=1)
    stall[0], first = False, len(gets)
    path = fetch(f"s3://{bucket}/model", tmp_path)
    assert (path / "model.safetensors").read_bytes() == MODEL["model.safetensors"]
    assert len(gets) - first == ranges(MODEL) - 3  # resumed after the 3 finished ranges


def test_sagemaker_timeout_env_is_honoured_while_waiting_for_the_lock(
    put_model, tmp_path, monkeypatch
):
    bucket = put_model({"a.bin": b"x"})
    fetch(f"s3://{bucket}/model", tmp_path / "warm")  # the lock file name: <entry>.lock
    lock_name = next((tmp_path / "warm").glob("*.lock")).name
    (tmp_path / "cache").mkdir()
    with open(tmp_path / "cache" / lock_name, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # "another process" is downloading
        monkeypatch.setenv("ModelDataDownloadTimeoutInSeconds", "0.5")
        with pytest.raises(
            DownloadTimeout, match=r"waiting for another process to finish s3://.* within 0.5 s"
        ):
            fetch(f"s3://{bucket}/model", tmp_path / "cache", timeout_s=600)
