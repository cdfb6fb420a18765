"""Content checks for downloaded objects: which digest to trust, and computing it.

One check per object, the strongest the store offers at the lowest cost:
  1. the sha256 our partition manifest records (end to end: written when the model was built);
  2. an S3 checksum header (crc32 first: it hashes at several GB/s; then sha256, sha1);
  3. the ETag, which is the MD5 of a single-part upload.
Multipart uploads carry "composite" values: the digest of the concatenated part digests,
suffixed "-N". Computing those needs the part sizes: uploaders use equal parts (the last one
shorter), so we assume that from part 1's size and check exact sizes only on a mismatch.
CRC32C / CRC64NVME need native code we do not ship; such objects fall back to the ETag.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass

from shardserve.storage.s3 import ObjectInfo


class _Crc32:
    """zlib.crc32 behind the hashlib interface (S3 encodes the 4 bytes big-endian)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


_HASHES = {"crc32": _Crc32, "sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}
_S3_ORDER = ("crc32", "sha256", "sha1")  # cheapest first


@dataclass(frozen=True)
class Expected:
    """A digest the downloaded bytes must reproduce."""

    source: str  # for messages: "sha256 in the partition manifest", "S3 ChecksumCRC32", ...
    algo: str
    value: str  # as the store writes it: hex or base64, "-N" suffix when composite
    encoding: str  # "hex" | "base64"
    parts: tuple[int, ...] | None = None  # part sizes when composite

    def with_parts(self, parts: tuple[int, ...]) -> Expected:
        return Expected(self.source, self.algo, self.value, self.encoding, parts)


def choose(info: ObjectInfo, sha256: str | None = None) -> Expected | None:
    """The check to run for an object, or None when only its size can be checked."""
    if sha256:
        return Expected("sha256 in the partition manifest", "sha256", sha256.lower(), "hex")
    candidates = [
        (f"S3 Checksum{a.upper()}", a, info.checksums[a], "base64")
        for a in _S3_ORDER
        if a in info.checksums
    ]
    if info.etag_is_md5:
        candidates.append(("ETag (MD5)", "md5", info.etag, "hex"))
    for source, algo, value, encoding in candidates:
        count = _part_count(value)
        if count is None:
            return Expected(source, algo, value, encoding)
        parts = equal_parts(info.size, info.first_part_size, count)
        if parts is not None:
            return Expected(source, algo, value, encoding, parts)
    return None


def _part_count(value: str) -> int | None:
    head, sep, tail = value.rpartition("-")
    return int(tail) if sep and tail.isdigit() and head else None


def equal_parts(size: int, part_size: int | None, count: int) -> tuple[int, ...] | None:
    """Part sizes of a `count`-part upload of `size` bytes in `part_size` parts; None if impossible."""
    if not part_size or not (count - 1) * part_size < size <= count * part_size:
        return None
    return (part_size,) * (count - 1) + (size - (count - 1) * part_size,)


class Digester:
    """Fed an object's bytes in order; `value()` is then comparable with `expected.value`."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self._new = _HASHES[expected.algo]
        self._parts = list(expected.parts or ())
        self._part_digests: list[bytes] = []
        self._left = self._parts.pop(0) if expected.parts else -1  # -1: one whole-object hash
        self._hash = self._new()

    def update(self, data) -> None:
        view = memoryview(data)
        while self._left >= 0 and len(view) >= self._left and self._parts:
            self._hash.update(view[: self._left])
            view = view[self._left :]
            self._part_digests.append(self._hash.digest())
            self._hash, self._left = self._new(), self._parts.pop(0)
        self._hash.update(view)
        if self._left >= 0:
            self._left -= len(view)

    def value(self) -> str:
        if self.expected.parts is None:
            return self._encode(self._hash.digest())
        combined = self._new()
        for digest in [*self._part_digests, self._hash.digest()]:
            combined.update(digest)
        return f"{self._encode(combined.digest())}-{len(self.expected.parts)}"

    def _encode(self, raw: bytes) -> str:
        return raw.hex() if self.expected.encoding == "hex" else base64.b64encode(raw).decode()
