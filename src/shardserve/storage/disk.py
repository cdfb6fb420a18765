"""Local file-system helpers shared by downloads, unpacking and the commands that write output:
safe names, free space, output directories, removal."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
from pathlib import Path

from shardserve.errors import StorageError


def safe_relative(name: str, what: str) -> str:
    """`name` as a clean relative path ("a/b") that cannot leave the directory it is joined to.

    Absolute paths, drive letters and `..` components are refused (a hostile bucket or archive
    could otherwise write anywhere); empty and `.` components are dropped.
    """
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise StorageError(f"{what}: absolute path {name!r} refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"{what}: path {name!r} leaves the target directory ('..'); refused")
    if not parts:
        raise StorageError(f"{what}: empty path {name!r} refused")
    return "/".join(parts)


def file_sizes(root: Path) -> dict[str, dict]:
    """{relpath: {"size": n}} of the regular files under `root` (what a DONE marker lists)."""
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(path: Path, needed: int, what: str) -> None:
    free = free_bytes(path)
    if needed > free:
        raise StorageError(
            f"not enough disk space for {what} in {path}: needs {human_bytes(needed)} "
            f"({needed} bytes), {human_bytes(free)} ({free} bytes) available"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def fsync_path(path: Path) -> None:
    """Flush a file's or directory's data and metadata to disk (before a DONE marker trusts it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a just-written range to disk now, without waiting (Linux sync_file_range).

    Downloads fsync every file before the DONE marker; left to the kernel, a model smaller
    than RAM would sit dirty in the page cache until that fsync, which then costs a full disk
    write after the network is done. Started per range, the writes overlap the download.
    A no-op where the call is unavailable.
    """
    sync_file_range = _sync_file_range()
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE: queue, do not wait


@functools.cache
def _sync_file_range():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return call


def remove(path: Path) -> None:
    """Delete a file or a tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def output_dir_base(path: Path, what: str) -> tuple[Path, Path | None]:
    """Where making directory `path` starts: (its nearest existing ancestor, or itself if it
    exists; the topmost directory mkdir(parents=True) would create, None if none). ValueError
    naming `what` (a flag) where that existing path is not a directory, before any work that
    mkdir would fail after."""
    first_missing = None
    for existing in (path, *path.parents):
        if existing.exists():
            break
        first_missing = existing
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} exists and is not a directory")
    return existing, first_missing
