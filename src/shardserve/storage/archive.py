"""Safe unpacking of model archives (.tar.gz, .tgz, .tar, .zip; tar may also be bz2/xz).

Nothing is ever written outside the target:
  - member names must be relative without `..` (disk.safe_relative);
  - regular files and directories are written first, while the target holds no symlink at all,
    files opened with O_NOFOLLOW; tar hard links become copies of files already unpacked;
  - symlinks come last: each must point inside the target, lexically and after resolution
    (its parent included), and all are re-resolved at the end, since a later link can change
    where an earlier one leads;
  - devices, FIFOs and sockets are refused; so are archives holding more than `max_files`
    entries or more than `max_bytes` of data (default: the free disk space).
A compressed tar is read to the end of its stream, so the decompressor checks its CRC: damage in
a member's data or in the trailer fails the unpack instead of serving damaged weights. A tar must
end with its end-of-archive block: one that stops between members is truncated, not complete.
On any refusal the target is deleted and StorageError names the member and the reason.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from shardserve.errors import StorageError
from shardserve.storage.disk import file_sizes, free_bytes, remove, safe_relative

DEFAULT_MAX_FILES = 200_000
_COPY_CHUNK = 1 << 20
# What a damaged compressed stream raises besides tarfile/zipfile errors and EOFError
# (BadGzipFile is an OSError, so it must be told apart from a failure to write the target).
_DECOMPRESS_ERRORS = (gzip.BadGzipFile, zlib.error, lzma.LZMAError)


@dataclass
class _Member:
    name: str
    kind: str  # file | dir | symlink | hardlink | <refused type name>
    size: int = 0
    executable: bool = False
    link: str = ""  # symlink target / hardlink source
    open: Callable[[], IO[bytes]] | None = None


def unpack(
    archive: Path, target: Path, *, max_bytes: int | None = None, max_files: int = DEFAULT_MAX_FILES
) -> dict[str, dict]:
    """Unpack `archive` into the new directory `target`; returns {relpath: {"size": n}}."""
    _Unpacker(
        archive, target, free_bytes(target.parent) if max_bytes is None else max_bytes, max_files
    ).run()
    return file_sizes(target)


class _Unpacker:
    def __init__(self, archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
        self.archive, self.target = archive, target
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = 0
        self.files: set[str] = set()
        self.links: list[tuple[str, str]] = []

    def run(self) -> None:
        self.target.mkdir(parents=True)
        try:
            count = 0
            for member in _members(self.archive):
                count += 1
                if count > self.max_files:
                    self._refuse(member.name, f"the archive has more than {self.max_files} entries")
                self._extract(member)
            for name, link in self.links:
                self._symlink(name, link)
            for name, _ in self.links:  # a later link can redirect an earlier one
                self._inside_check(name, self.target / name)
        except (
            tarfile.TarError,
            zipfile.BadZipFile,
            EOFError,
            RuntimeError,
            ValueError,
            *_DECOMPRESS_ERRORS,
        ) as e:
            remove(self.target)
            raise StorageError(f"archive {self.archive} is damaged or unsupported: {e}") from None
        except OSError as e:
            remove(self.target)
            raise StorageError(f"cannot unpack {self.archive} into {self.target}: {e}") from None
        except BaseException:
            remove(self.target)
            raise

    def _refuse(self, name: str, why: str) -> NoReturn:
        raise StorageError(f"archive {self.archive}: member {name!r} refused: {why}")

    def _extract(self, m: _Member) -> None:
        if m.kind == "dir" and posixpath.normpath(m.name) == ".":
            return  # the "./" entry of `tar -C dir .`
        rel = safe_relative(m.name, f"archive {self.archive}")
        path = self.target / rel
        if m.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
        elif m.kind == "file":
            self._write(rel, path, m.open, m.size, m.executable)
        elif m.kind == "hardlink":
            source = safe_relative(m.link, f"archive {self.archive}: hard link {m.name!r}")
            if source not in self.files:
                self._refuse(
                    m.name, f"hard link to {m.link!r}, which is not a file unpacked before it"
                )
            self._write(
                rel,
                path,
                lambda: open(self.target / source, "rb"),
                (self.target / source).stat().st_size,
                False,
            )
        elif m.kind == "symlink":
            if m.link.startswith("/") or posixpath.normpath(
                posixpath.join(posixpath.dirname(rel), m.link)
            ).startswith(".."):
                self._refuse(m.name, f"symbolic link to {m.link!r} leaves the target directory")
            self.links.append((rel, m.link))
        else:
            self._refuse(m.name, f"it is a {m.kind}; only files, directories and links are allowed")

    def _write(self, rel: str, path: Path, opener, size: int, executable: bool) -> None:
        self._count(rel, size)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        written, counted = 0, size
        with (
            opener() as src,
            os.fdopen(os.open(path, flags, 0o755 if executable else 0o644), "wb") as dst,
        ):
            while chunk := src.read(_COPY_CHUNK):
                written += len(chunk)
                if written > counted:  # more data than the header said: count it too
                    self._count(rel, written - counted)
                    counted = written
                dst.write(chunk)
        self.files.add(rel)

    def _count(self, rel: str, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            self._refuse(
                rel, f"the archive unpacks to more than {self.max_bytes} bytes (the limit)"
            )

    def _symlink(self, rel: str, link: str) -> None:
        path = self.target / rel
        self._inside_check(rel, path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link, path)
        self._inside_check(rel, path)

    def _inside_check(self, rel: str, path: Path) -> None:
        root = os.path.realpath(self.target)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            self._refuse(rel, "symbolic link resolves outside the target directory")


def _members(archive: Path) -> Iterator[_Member]:
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        yield from _zip_members(archive)
    elif tarfile.is_tarfile(archive):
        yield from _tar_members(archive)
    else:
        raise StorageError(f"{archive} is neither a tar nor a zip archive")


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Notes whether the last header read was the zero block that ends a tar. tarfile also ends
    quietly at a file that stops, or at a damaged header, after the first member: an archive cut
    short (a copy still being written, a partial download) would unpack as a model without its
    last files."""

    @classmethod
    def fromtarfile(cls, tf):
        tf.reached_end_marker = False
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf.reached_end_marker = True
            raise


def _tar_members(archive: Path) -> Iterator[_Member]:
    with tarfile.open(archive, "r:*", tarinfo=_EndCheckingTarInfo) as tf:
        for m in tf:
            if m.isreg():
                yield _Member(
                    m.name, "file", m.size, bool(m.mode & 0o100), open=lambda m=m: tf.extractfile(m)
                )
            elif m.isdir():
                yield _Member(m.name, "dir")
            elif m.issym():
                yield _Member(m.name, "symlink", link=m.linkname)
            elif m.islnk():
                yield _Member(m.name, "hardlink", link=m.linkname)
            else:
                kind = (
                    "character device"
                    if m.ischr()
                    else "block device"
                    if m.isblk()
                    else "FIFO"
                    if m.isfifo()
                    else "special file"
                )
                yield _Member(m.name, kind)
        if not getattr(tf, "reached_end_marker", False):
            raise tarfile.ReadError(
                f"it ends at byte {tf.offset} without the end-of-archive blocks: truncated, "
                "or a damaged header there"
            )
        _read_to_end(tf.fileobj)


def _read_to_end(stream: IO[bytes]) -> None:
    """Read what follows the end-of-archive blocks: tarfile stops there, so a gzip/bz2/xz
    decompressor would never reach its trailer and check the CRC and length of the data."""
    try:
        while stream.read(_COPY_CHUNK):
            pass
    except OSError as e:  # bz2 reports a bad CRC as a plain OSError: the archive's fault
        raise tarfile.ReadError(f"compressed data is corrupt: {e}") from None


def _zip_members(archive: Path) -> Iterator[_Member]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if info.is_dir():
                yield _Member(info.filename, "dir")
            elif stat.S_ISLNK(mode):
                yield _Member(
                    info.filename, "symlink", link=zf.read(info)[:4096].decode(errors="replace")
                )
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: DOS attributes or bare perms
                kind = "FIFO" if stat.S_ISFIFO(mode) else "device or special file"
                yield _Member(info.filename, kind)
            else:
                yield _Member(
                    info.filename,
                    "file",
                    info.file_size,
                    bool(mode & 0o100),
                    open=lambda i=info: zf.open(i),
                )
