"""Build a directory once per host, however many processes ask at the same time.

    <dest>.lock      flock'ed by the one process building; the others wait on it
    <dest>.partial/  the work area (kept across a kill, so the next start can resume)
    <dest>/          appears complete, by one atomic rename
    <dest>/.shardserve-done.json   the DONE marker: the manifest of what was verified

A reader trusts <dest> only when the DONE marker is there and every file it lists still has its
size. The marker is first written inside the work tree under another name and renamed once
<dest> is in place, so a kill between the two renames is finished by the next start instead of
being mistaken for a foreign directory. The kernel drops a flock when its process dies, so a
killed builder never blocks the others.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shardserve.errors import StorageError
from shardserve.storage.deadline import Deadline
from shardserve.storage.disk import fsync_path, remove
from shardserve.storage.exceptions import BadDownload

logger = logging.getLogger("shardserve.storage")

DONE_NAME = ".shardserve-done.json"
_STAGED_NAME = ".shardserve-verified.json"  # the DONE content before <dest> exists
_FORMAT = 1

Builder = Callable[[Path], tuple[Path, dict]]  # work dir -> (finished tree inside it, manifest)


def done_manifest(dest: Path) -> dict | None:
    """The DONE manifest of a complete `dest`, or None if `dest` cannot be trusted."""
    try:
        manifest = json.loads((dest / DONE_NAME).read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT or not all(
            (dest / rel).stat().st_size == entry["size"] for rel, entry in files.items()
        ):
            return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def ensure(
    dest: Path, build: Builder, *, deadline: Deadline, what: str, owned: bool, identity: dict
) -> Path:
    """Return `dest`, building it with `build(work_dir)` unless another process did.

    `identity`: what `dest` must hold (e.g. {"location": "s3://b/m"}), recorded in the DONE
    manifest; a complete `dest` holding something else counts as a leftover.
    `owned`: `dest` belongs to us (a cache entry), so a leftover may be deleted; otherwise
    (a directory the user named) it is only ever replaced when empty.
    `build` may raise: BadDownload deletes the work area (its bytes cannot be trusted), any
    other error keeps it for the next start to resume.
    """
    try:
        return _ensure(dest, build, deadline, what, owned, identity)
    except OSError as e:  # an unwritable cache dir, a full disk: the user's to fix, no traceback
        raise StorageError(
            f"{what}: cannot write {e.filename or dest}: {e.strerror or e}"
        ) from None


def _ensure(
    dest: Path, build: Builder, deadline: Deadline, what: str, owned: bool, identity: dict
) -> Path:
    if _holds(dest, identity):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with host_lock(dest.with_name(dest.name + ".lock"), deadline, what):
        if (dest / _STAGED_NAME).is_file():
            _publish(dest)  # killed between the two renames: the tree was verified already
        if _holds(dest, identity):
            logger.info("%s: already at %s", what, dest)
            return dest
        _clear_leftover(dest, owned)
        work = dest.with_name(dest.name + ".partial")
        work.mkdir(exist_ok=True)
        try:
            tree, manifest = build(work)
        except BadDownload:
            remove(work)
            raise
        manifest = _without_markers(tree, manifest)
        manifest = {"format": _FORMAT, "created": time.time(), **identity, **manifest}
        (tree / _STAGED_NAME).write_text(json.dumps(manifest, indent=1))
        fsync_path(tree)
        os.replace(tree, dest)  # replaces only an empty directory; _clear_leftover saw to that
        _publish(dest)
        remove(work)
    return dest


def _without_markers(tree: Path, manifest: dict) -> dict:
    """Drop our own marker files from a tree built out of an artifact that carries them (one
    packed or uploaded from a finished download). Kept, the DONE marker would overwrite one that
    the manifest lists with another size: the entry would never again count as complete, so
    every start would delete it, even under a process that is loading from it."""
    for name in (DONE_NAME, _STAGED_NAME):
        remove(tree / name)
    files = manifest.get("files")
    if not isinstance(files, dict):
        return manifest
    kept = {k: v for k, v in files.items() if k not in (DONE_NAME, _STAGED_NAME)}
    return {**manifest, "files": kept}


def _holds(dest: Path, identity: dict) -> bool:
    manifest = done_manifest(dest)
    return manifest is not None and all(manifest.get(k) == v for k, v in identity.items())


def _publish(dest: Path) -> None:
    fsync_path(dest.parent)
    os.replace(dest / _STAGED_NAME, dest / DONE_NAME)
    fsync_path(dest)


def _clear_leftover(dest: Path, owned: bool) -> None:
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return
    if not owned:
        raise StorageError(
            f"{dest} already exists and is not a complete download of this model (no DONE "
            "marker, files of it removed, or another location): remove it or choose another "
            "directory"
        )
    logger.warning("removing incomplete download %s", dest)
    remove(dest)


@contextmanager
def host_lock(path: Path, deadline: Deadline, what: str) -> Iterator[None]:
    """An exclusive flock on `path`; waits for the holder until `deadline`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    logger.info("%s: waiting for process %s, which holds %s", what, holder, path)
                    waiting = True
                if deadline.expired():
                    raise deadline.error(
                        f"waiting for another process to finish {what} (lock {path})"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
