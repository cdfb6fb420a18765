"""Fixtures for the storage tests: a real S3 server (SeaweedFS, see seaweedfs_server.py), test
models put into it, and GET counting.

The server starts once per session (about 3 s). If it cannot start, tests that need it FAIL
with weed's own log, never skip: a storage layer untested against S3 must not pass CI silently.
"""

from __future__ import annotations

import io

import pytest
from seaweedfs_server import SeaweedFS


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> SeaweedFS:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3env(s3_server, monkeypatch) -> SeaweedFS:
    """The server, with this process's environment pointing boto3 at it."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("ModelDataDownloadTimeoutInSeconds", raising=False)
    return s3_server


def install_get_counter(setattr_=setattr) -> list[tuple[str, str | None]]:
    """Make every S3 client the code under test creates record its GETs as (key, range).

    Also used by fetch_worker.py, so subprocesses count the same way.
    """
    from shardserve.storage import s3

    calls: list[tuple[str, str | None]] = []
    original = s3.make_client

    def make_client(*args, **kwargs):
        client = original(*args, **kwargs)
        client.meta.events.register(
            "before-parameter-build.s3.GetObject",
            lambda params, **_: calls.append((params["Key"], params.get("Range"))),
        )
        return client

    setattr_(s3, "make_client", make_client)
    return calls


@pytest.fixture
def gets(monkeypatch) -> list[tuple[str, str | None]]:
    return install_get_counter(monkeypatch.setattr)


PART = 5 << 20  # the smallest multipart part S3 clients will send


@pytest.fixture
def put_model(s3env):
    """put_model({name: bytes}, prefix=..., checksum=...) -> a new bucket holding them.

    checksum: "CRC32" / "SHA256" (S3 checksum headers, composite for multipart objects) or None
    (no checksum: only the ETag, a plain or multipart MD5, can verify). Objects above 5 MiB are
    uploaded in 5 MiB parts.
    """
    from boto3.s3.transfer import TransferConfig

    def put(
        files: dict[str, bytes],
        *,
        prefix: str = "model/",
        checksum: str | None = "CRC32",
        bucket=None,
    ) -> str:
        bucket = bucket or s3env.new_bucket()
        client = s3env.client(
            request_checksum_calculation="when_supported" if checksum else "when_required"
        )
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
        for name, data in files.items():
            extra = {"ChecksumAlgorithm": checksum} if checksum else {}
            client.upload_fileobj(
                io.BytesIO(data), bucket, prefix + name, ExtraArgs=extra, Config=config
            )
        return bucket

    return put
