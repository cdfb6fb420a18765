"""The end of one object's download: once its last range is hashed, check the file, flush it.

The digest was computed while the ranges landed (ordered_digest.py) against the check
digest.choose picked; here it is compared, and the file is fsynced before a DONE marker may
trust it. `record` is what the DONE manifest then says about the object.
"""

from __future__ import annotations

from pathlib import Path

from shardserve.storage import s3
from shardserve.storage.digest import Digester
from shardserve.storage.disk import fsync_path
from shardserve.storage.exceptions import BadDownload
from shardserve.storage.ordered_digest import OrderedDigest, feed_file


def complete(client, bucket: str, info: s3.ObjectInfo, path: Path, digest: OrderedDigest) -> None:
    """Hash what is contiguous now; if that reached the end, verify the file and fsync it.

    Raises BadDownload when the size or the digest is wrong.
    """
    if not digest.advance():
        return
    if path.stat().st_size != info.size:
        raise BadDownload(f"{path}: size {path.stat().st_size}, expected {info.size}")
    expected, got = digest.expected, digest.value()
    if expected is not None and got != expected.value:
        got = _recheck_parts(client, bucket, info, path, digest, got)
        if got != expected.value:
            raise BadDownload(
                f"s3://{bucket}/{info.key}: the downloaded bytes do not match its "
                f"{expected.source} (expected {expected.value}, got {got}); download deleted"
            )
    fsync_path(path)


def _recheck_parts(
    client, bucket: str, info: s3.ObjectInfo, path: Path, digest: OrderedDigest, got: str | None
) -> str | None:
    """A composite digest can also miss because the uploader used unequal parts: recompute
    with the exact part sizes (one HEAD per part) before calling the data corrupt."""
    parts = digest.expected.parts
    if parts is None:
        return got
    exact = tuple(s3.part_sizes(client, bucket, info.key, len(parts)))
    if exact == parts:
        return got
    digester = Digester(digest.expected.with_parts(exact))
    feed_file(path, 0, info.size, digester)
    return digester.value()


def record(info: s3.ObjectInfo, digest: OrderedDigest) -> dict:
    """The object's entry in the DONE manifest."""
    return {
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        "verified": digest.expected.source if digest.expected else "size only",
    }
