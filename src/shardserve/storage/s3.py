"""S3 via botocore: a client with retries, listing, HEAD, and errors that name the object.

Credentials come from boto3's standard chain (env, profile, SSO, instance/task role); the
endpoint from the argument, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (S3-compatible
stores such as SeaweedFS or MinIO). botocore is imported lazily: the CLI stays fast to start.
A client made with a Deadline keeps every request, retries included, within it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from shardserve.errors import StorageError
from shardserve.storage.deadline import Deadline
from shardserve.storage.disk import safe_relative
from shardserve.storage.exceptions import BadDownload, DownloadTimeout
from shardserve.storage.uri import S3Location

# botocore "standard" retries: throttling, 5xx and connection errors, exponential backoff with
# jitter. AWS_MAX_ATTEMPTS overrides (the name botocore itself reads).
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT = 10.0
_MIN_TIMEOUT = 0.1  # urllib3 refuses a timeout of 0; a request started that late fails anyway


@dataclass(frozen=True)
class RemoteObject:
    """One object of a listing, with its path relative to the model root."""

    key: str
    size: int
    etag: str  # without quotes
    relpath: str


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells about an object: enough to download and to verify it."""

    key: str
    size: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)  # {"crc32": "base64[-N]", ...}
    etag_is_md5: bool = True  # False for SSE-KMS / SSE-C objects (their ETag is opaque)
    first_part_size: int | None = None  # multipart objects: size of part 1


def endpoint(endpoint_url: str | None = None) -> str | None:
    return (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )


def make_client(
    endpoint_url: str | None = None,
    *,
    concurrency: int = 8,
    read_timeout: float = 60.0,
    deadline: Deadline | None = None,
):
    """A thread-safe S3 client sized for `concurrency` parallel requests.

    A fresh botocore session per client, so credentials and endpoint are read from the
    environment each time; the API model loader is shared (parsing it costs ~0.2 s a session).
    `deadline`: no attempt of a request waits past it and none starts after it; a request
    that runs out of time raises DownloadTimeout (storage_error names the object).
    """
    import botocore.session
    from botocore.config import Config

    settings = dict(
        retries={"mode": "standard", "max_attempts": max_attempts()},
        max_pool_connections=concurrency + 4,
        connect_timeout=_within(deadline, CONNECT_TIMEOUT),
        read_timeout=_within(deadline, read_timeout),
        tcp_keepalive=True,
    )
    try:
        # We verify checksums ourselves over whole objects; botocore's own check would hash
        # every small GET a second time.
        config = Config(**settings, response_checksum_validation="when_required")
    except TypeError:  # botocore < 1.36 has neither the option nor the default check
        config = Config(**settings)
    session = botocore.session.Session()
    session.register_component("data_loader", _shared_loader())
    client = session.create_client("s3", endpoint_url=endpoint(endpoint_url), config=config)
    if deadline is not None and deadline.timeout_s is not None:
        _bind_deadline(client, deadline, read_timeout)
    return client


class _OutOfTime(DownloadTimeout):
    """Raised inside botocore when the deadline passes; storage_error adds what was asked."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__(str(deadline.error("an S3 request")))
        self.deadline = deadline


def _within(deadline: Deadline | None, seconds: float) -> float:
    """`seconds`, or less if the deadline leaves less (the client's defaults, for all requests)."""
    left = None if deadline is None else deadline.remaining()
    return seconds if left is None else max(_MIN_TIMEOUT, min(seconds, left))


def _bind_deadline(client, deadline: Deadline, read_timeout: float) -> None:
    """Hold every attempt of every request of `client` to `deadline`.

    botocore retries a request up to max_attempts() times, each waiting up to the read timeout,
    with backoff sleeps between: alone, a silent endpoint takes minutes whatever the deadline.
    So each attempt waits at most min(read_timeout, time left), no attempt starts after the
    deadline and no retry is asked for once it has passed. Older botocore ignores the
    per-request read timeout (1.44 honours it); there the client's, capped when it was made,
    applies. botocore picks a backoff after our retry hook runs, so one sleep can still end
    past the deadline; the attempt after it then fails at once.
    """

    def before_send(request, **_) -> None:
        left = deadline.remaining()
        if not left:
            raise _OutOfTime(deadline)
        context = getattr(request, "context", None)
        if context is not None:
            context["read_timeout"] = max(_MIN_TIMEOUT, min(read_timeout, left))

    def needs_retry(**_) -> None:
        if deadline.expired():
            raise _OutOfTime(deadline)

    client.meta.events.register("before-send.s3", before_send)
    client.meta.events.register_first("needs-retry.s3", needs_retry)


@functools.cache
def _shared_loader():
    from botocore.loaders import create_loader

    return create_loader(os.environ.get("AWS_DATA_PATH"))


def max_attempts() -> int:
    raw = os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"AWS_MAX_ATTEMPTS must be an integer, got {raw!r}") from None


def list_objects(client, loc: S3Location) -> list[RemoteObject]:
    """All objects of a model: the keys under `key/`, or the single object `key` itself."""
    prefix = loc.key + "/" if loc.key else ""
    found: list[RemoteObject] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):  # a "folder" marker, not a file
                    continue
                found.append(
                    _remote(item["Key"], item["Size"], item["ETag"], item["Key"][len(prefix) :])
                )
    except Exception as e:
        raise storage_error(e, f"listing {loc}") from None
    if not found and loc.key:
        info = head(client, loc.bucket, loc.key, missing_ok=True)
        if info is not None:
            return [_remote(info.key, info.size, info.etag, loc.key.rsplit("/", 1)[-1])]
    if not found:
        raise StorageError(
            f"{loc} is empty: no objects under prefix {prefix!r} of bucket {loc.bucket!r}"
        )
    _refuse_collisions(found)
    return found


def _refuse_collisions(objects: list[RemoteObject]) -> None:
    """Keys such as "m/a//b" and "m/a/b" would land on one file and corrupt each other; "m/a"
    and "m/a/b" need `a` as a file and as a directory, which failed only once the download had
    fetched everything else (and again at every retry)."""
    seen: dict[str, str] = {}
    for o in objects:
        if o.relpath in seen:
            raise StorageError(f"S3 keys {seen[o.relpath]!r} and {o.key!r} map to the same file")
        seen[o.relpath] = o.key
    for o in objects:
        parts = o.relpath.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise StorageError(
                    f"S3 key {seen[parent]!r} is a file, but {o.key!r} needs it as a directory"
                )


def _remote(key: str, size: int, etag: str, relpath: str) -> RemoteObject:
    return RemoteObject(key, int(size), etag.strip('"'), safe_relative(relpath, f"S3 key {key!r}"))


def head(client, bucket: str, key: str, *, missing_ok: bool = False) -> ObjectInfo | None:
    """HEAD with checksums; multipart objects also get the size of their first part."""
    try:
        resp = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as e:
        if missing_ok and http_status(e) == 404:
            _check_bucket(client, bucket)
            return None
        raise storage_error(e, f"s3://{bucket}/{key}") from None
    etag = resp["ETag"].strip('"')
    checksums = {
        name[len("Checksum") :].lower(): value
        for name, value in resp.items()
        if name.startswith("Checksum") and name != "ChecksumType" and isinstance(value, str)
    }
    first_part = None
    if "-" in etag or any("-" in v for v in checksums.values()):
        first_part = part_sizes(client, bucket, key, 1)[0]
    return ObjectInfo(
        key=key,
        size=int(resp["ContentLength"]),
        etag=etag,
        checksums=checksums,
        etag_is_md5=not (
            str(resp.get("ServerSideEncryption", "")).startswith("aws:kms")
            or resp.get("SSECustomerAlgorithm")
        ),
        first_part_size=first_part,
    )


def part_sizes(client, bucket: str, key: str, count: int) -> list[int]:
    """Sizes of the first `count` parts of a multipart object (one HEAD per part)."""
    try:
        return [
            int(client.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"])
            for n in range(1, count + 1)
        ]
    except Exception as e:
        raise storage_error(e, f"s3://{bucket}/{key} (part sizes)") from None


def _check_bucket(client, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as e:
        raise storage_error(e, f"bucket {bucket!r}", bucket=bucket) from None


def http_status(exc: Exception) -> int | None:
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


def storage_error(exc: Exception, what: str, *, bucket: str | None = None) -> Exception:
    """A boto3/botocore exception -> a StorageError whose message says what to fix.

    Anything else (a bug, KeyboardInterrupt's kin) is returned unchanged, to be re-raised.
    """
    from botocore import exceptions as bx

    if isinstance(exc, _OutOfTime):
        return exc.deadline.error(what)
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageError(
            f"no AWS credentials to read {what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE, or run with an instance/task role"
        )
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code, message, status = error.get("Code", "?"), error.get("Message", ""), http_status(exc)
        if code == "NoSuchBucket" or (bucket and status == 404):
            return StorageError(f"{what}: the bucket does not exist ({code})")
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(
                f"access denied to {what} ({code}: {message}); check the credentials and the "
                "bucket policy"
            )
        if status == 404:
            return StorageError(f"{what} does not exist ({code})")
        if status == 412:  # If-Match failed: bytes fetched before cannot be trusted
            return BadDownload(f"{what} changed on the server during the download; try again")
        return StorageError(f"{what}: S3 error {code} (HTTP {status}): {message}")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionError, bx.HTTPClientError)):
        return StorageError(f"cannot reach S3 for {what} after {max_attempts()} attempts: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"{what}: {exc}")
    return exc
