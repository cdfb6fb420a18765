"""Which checksum an object is checked against, and computing S3's composite forms."""

from __future__ import annotations

import base64
import hashlib
import random
import zlib

from shardserve.storage.digest import Digester, Expected, choose, equal_parts
from shardserve.storage.s3 import ObjectInfo


def _feed_in_random_chunks(digester: Digester, data: bytes, seed: int = 0) -> str:
    rng, pos = random.Random(seed), 0
    while pos < len(data):
        n = rng.randint(1, 7)
        digester.update(data[pos : pos + n])
        pos += n
    return digester.value()


def test_whole_object_digests():
    data = bytes(range(256)) * 3
    md5 = Expected("ETag (MD5)", "md5", hashlib.md5(data).hexdigest(), "hex")
    assert _feed_in_random_chunks(Digester(md5), data) == md5.value
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert _feed_in_random_chunks(Digester(Expected("S3", "crc32", crc, "base64")), data) == crc


def test_multipart_etag_is_md5_of_part_md5s():
    data = random.Random(1).randbytes(23)
    parts = (10, 10, 3)
    chunks = [data[:10], data[10:20], data[20:]]
    etag = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest() + "-3"
    for seed in range(5):  # part boundaries fall inside and at the edges of fed chunks
        assert (
            _feed_in_random_chunks(
                Digester(Expected("ETag", "md5", etag, "hex", parts)), data, seed
            )
            == etag
        )


def test_composite_sha256_checksum():
    data = random.Random(2).randbytes(9)
    parts = (4, 4, 1)
    raw = hashlib.sha256(
        b"".join(hashlib.sha256(data[i : i + 4]).digest() for i in (0, 4, 8))
    ).digest()
    value = base64.b64encode(raw).decode() + "-3"
    assert (
        _feed_in_random_chunks(Digester(Expected("S3", "sha256", value, "base64", parts)), data)
        == value
    )


def test_equal_parts():
    assert equal_parts(23, 10, 3) == (10, 10, 3)
    assert equal_parts(20, 10, 2) == (10, 10)
    assert equal_parts(23, 10, 2) is None  # cannot be 2 parts of 10
    assert equal_parts(23, None, 3) is None


def _info(**kw) -> ObjectInfo:
    return ObjectInfo(**{"key": "k", "size": 23, "etag": "e" * 32, **kw})


def test_choice_prefers_manifest_then_cheapest_s3_checksum_then_etag():
    sha = "ab" * 32
    both = _info(checksums={"sha256": "x=", "crc32": "y="})
    assert choose(both, sha).source == "sha256 in the partition manifest"
    assert choose(both).algo == "crc32"
    assert choose(_info()).source == "ETag (MD5)"


def test_choice_skips_what_cannot_be_computed():
    # crc32c needs native code; an SSE-KMS ETag is not an MD5: nothing left but the size.
    assert choose(_info(checksums={"crc32c": "z="}, etag_is_md5=False)) is None
    # A composite value without a known part size falls back to the next candidate.
    multipart = _info(checksums={"crc32": "y=-3"}, etag="f" * 32 + "-3", first_part_size=10)
    assert choose(multipart).parts == (10, 10, 3)
    assert choose(_info(checksums={"crc32": "y=-3"}, first_part_size=None)).algo == "md5"
