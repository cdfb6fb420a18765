"""The two StorageError kinds callers act on differently: delete the partial download, or keep it."""

from __future__ import annotations

from shardserve.errors import StorageError


class BadDownload(StorageError):
    """The bytes fetched so far cannot be trusted (checksum mismatch, object changed): the
    partial download is deleted rather than resumed."""


class DownloadTimeout(StorageError):
    """The time budget ran out; what was downloaded so far is kept for the next start."""
