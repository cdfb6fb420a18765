"""Model locations: what a user may write in `option.model_id` / `option.s3url` / the CLI.

/models/opt-30b  file:///models/opt-30b  ./model.tar.gz      -> LocalLocation
s3://bucket/prefix  s3://bucket/path/model.tar.gz  s3://bucket  -> S3Location
facebook/opt-125m  (already in the local Hugging Face cache)   -> LocalLocation (snapshot)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from shardserve.errors import StorageError
from shardserve.storage import hf_cache

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

# S3 bucket names: 3-63 chars of lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class LocalLocation:
    path: Path  # absolute; a directory or an archive file

    @property
    def is_archive(self) -> bool:
        return self.path.is_file() and is_archive_name(self.path.name)

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # "" = the whole bucket; no leading or trailing slash

    @property
    def is_archive(self) -> bool:
        return is_archive_name(self.key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


Location = LocalLocation | S3Location


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def parse_location(text: str) -> Location:
    """Parse a model location; raises StorageError saying what was expected."""
    text = str(text).strip()
    if not text:
        raise StorageError(
            "model location is empty: give a directory, an archive, or s3://bucket/prefix"
        )
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "s3":
        return _parse_s3(text)
    if scheme == "file":
        url = urlparse(text)
        if url.netloc not in ("", "localhost"):  # file://models/x would be /x, silently
            raise StorageError(
                f"file URL {text!r} names host {url.netloc!r}: write file:///PATH (three "
                "slashes) for an absolute path, or give the path itself"
            )
        return _local(Path(unquote(url.path)), text)
    if scheme:
        raise StorageError(
            f"unsupported model location {text!r}: use s3://bucket/prefix, file://PATH, "
            "a local path, or a Hugging Face model id already in the local cache"
        )
    path = Path(text).expanduser()
    if path.exists():
        return _local(path, text)
    if text.lower().startswith("s3:"):  # s3:/bucket/key, s3:bucket: a mistyped S3 URI
        raise StorageError(f"malformed S3 location {text!r}: write s3://bucket/prefix")
    snapshot = hf_cache.find_snapshot(text)
    if snapshot is not None:
        return LocalLocation(snapshot)
    raise StorageError(
        f"model location {text!r} does not exist: it is neither a local path nor a model in the "
        f"Hugging Face cache ({hf_cache.hub_dir()}); downloads from the Hub are not done here"
    )


def _parse_s3(text: str) -> S3Location:
    rest = text.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise StorageError(f"invalid S3 bucket name {bucket!r} in {text!r}")
    # "s3://b/model/" and "s3://b/model" name the same objects (one cache entry, one identity).
    return S3Location(bucket, key.strip("/"))


def _local(path: Path, text: str) -> LocalLocation:
    path = path.resolve()
    if not path.exists():
        raise StorageError(f"model location {text!r} does not exist ({path})")
    if path.is_dir():
        # A `models--org--name` folder of the HF cache is a store, not a model: use its snapshot.
        return LocalLocation(hf_cache.snapshot_of_repo_dir(path) or path)
    if not is_archive_name(path.name):
        raise StorageError(
            f"model location {path} is a file, not a model directory or an archive "
            f"({', '.join(ARCHIVE_SUFFIXES)})"
        )
    return LocalLocation(path)


def local_model_dir(text: str, command: str) -> Path:
    """The --model of a command that reads a local model directory (generate, partition), or
    ValueError saying what it is instead: Path() would fold s3://b/m into s3:/b/m, a directory
    that does not exist, and a file would be read as config.json ("not a valid JSON file")."""
    if "://" in text:
        raise ValueError(f"--model {text}: {command} reads a local model directory; fetch it first "
                         "with `shardserve download LOCATION --to DIR`")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError(f"--model {text} {'is a file, not a model directory' if path.exists() else 'does not exist'}")
    return path
