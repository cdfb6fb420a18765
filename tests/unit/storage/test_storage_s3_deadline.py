"""The overall time limit holds against an S3 endpoint that accepts connections and never
answers: every request, its retries and their backoff sleeps stop at the deadline.

No SeaweedFS here: local servers on 127.0.0.1 and fake credentials, nothing leaves the host.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shardserve import cli
from shardserve.storage.exceptions import DownloadTimeout
from shardserve.storage.fetch import fetch_model

LIMIT_S = 2.0
# Before the fix: 8 attempts of up to 60 s reads with backoff between, whatever the limit.
MAX_S = 8.0


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch, tmp_path):
    """Credentials and region from the environment only: no profile, IMDS or proxy is tried."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_MAX_ATTEMPTS",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "ModelDataDownloadTimeoutInSeconds",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def silent_endpoint():
    """http://127.0.0.1:PORT of a server that accepts every connection and never replies."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])  # held open, never read nor answered
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in [server, *accepted]:
        conn.close()


class _ListsButNeverSends(BaseHTTPRequestHandler):
    """Lists and HEADs one 10-byte object, then leaves every GET of it unanswered."""

    BODY_ETAG = '"0123456789abcdef0123456789abcdef"'
    LISTING = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>my-bucket</Name><Prefix>m/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
        b"<IsTruncated>false</IsTruncated><Contents><Key>m/w.bin</Key><Size>10</Size>"
        b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag></Contents></ListBucketResult>"
    )
    release = threading.Event()

    def do_GET(self) -> None:
        if "list-type=2" in self.path:
            self._reply(self.LISTING, "application/xml")
        else:
            self.release.wait()  # the ranged GET of the object: never answered

    def do_HEAD(self) -> None:
        self._reply(b"", "application/octet-stream", length=10)

    def _reply(self, body: bytes, kind: str, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("ETag", self.BODY_ETAG)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hanging_get_endpoint():
    """http://127.0.0.1:PORT where listing s3://my-bucket/m works but its object never arrives."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ListsButNeverSends)
    server.daemon_threads = True
    _ListsButNeverSends.release.clear()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _ListsButNeverSends.release.set()
    server.shutdown()
    server.server_close()


def _timed_fetch(location: str, endpoint: str, cache) -> tuple[DownloadTimeout, float]:
    start = time.monotonic()
    with pytest.raises(DownloadTimeout) as failure:
        fetch_model(
            location,
            cache_dir=cache,
            endpoint_url=endpoint,
            timeout_s=LIMIT_S,
            progress=False,
            part_size=4,
        )
    return failure.value, time.monotonic() - start


def test_listing_a_silent_endpoint_stops_at_the_deadline(silent_endpoint, tmp_path):
    error, elapsed = _timed_fetch("s3://my-bucket/m", silent_endpoint, tmp_path)
    assert elapsed < MAX_S
    assert f"listing s3://my-bucket/m did not finish within {LIMIT_S:g} s" in str(error)


def test_a_get_that_never_answers_stops_at_the_deadline(hanging_get_endpoint, tmp_path):
    error, elapsed = _timed_fetch("s3://my-bucket/m", hanging_get_endpoint, tmp_path)
    assert elapsed < MAX_S
    # The pool's wait or the GET's own thread, whichever notices first, names it.
    assert re.search(
        r"(download of s3://my-bucket/m|s3://my-bucket/m/w\.bin) did not finish within 2 s",
        str(error),
    )


def test_cli_timeout_against_a_silent_endpoint(silent_endpoint, tmp_path, capsys):
    start = time.monotonic()
    code = cli.main(
        [
            "download",
            "s3://my-bucket/k",
            "--endpoint-url",
            silent_endpoint,
            "--timeout",
            f"{LIMIT_S:g}",
            "--to",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    elapsed, err = time.monotonic() - start, capsys.readouterr().err
    assert code == 2 and elapsed < MAX_S
    assert "listing s3://my-bucket/k did not finish within 2 s" in err and "Traceback" not in err
