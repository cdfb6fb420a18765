"""Model artifact -> local directory, once per host: the entry point of the storage package."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from functools import partial
from pathlib import Path

from shardserve.errors import StorageError
from shardserve.storage import archive, s3
from shardserve.storage.deadline import Deadline, parse_seconds
from shardserve.storage.disk import remove
from shardserve.storage.journal import Journal
from shardserve.storage.manifest import MANIFEST, file_digests
from shardserve.storage.once import ensure
from shardserve.storage.transfer import DEFAULT_PART_SIZE, TransferOptions, download
from shardserve.storage.uri import LocalLocation, Location, S3Location, parse_location

# SageMaker's limit on fetching model data, when the platform passes it to the container.
SAGEMAKER_TIMEOUT_ENV = "ModelDataDownloadTimeoutInSeconds"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SERVING_DOWNLOAD_DIR") or "~/.cache/shardserve").expanduser()


def fetch_model(
    location: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    timeout_s: float | None = None,
    concurrency: int = 8,
    endpoint_url: str | None = None,
    progress: bool = True,
    part_size: int = DEFAULT_PART_SIZE,
    dest: str | os.PathLike | None = None,
) -> Path:
    """A local directory holding the model at `location`, ready to load.

    location: a model directory (used where it is), `file://DIR`, a `.tar.gz`/`.tgz`/`.tar`/`.zip`
        file, `s3://bucket/prefix` (every object under `prefix/`), `s3://bucket/key.tar.gz`,
        or a Hugging Face model id already in the local HF cache (offline).
    cache_dir: where downloads and unpacked archives live; default `$SERVING_DOWNLOAD_DIR`,
        else `~/.cache/shardserve`. Each location gets its own entry, reused by later calls;
        a local archive's entry only while the file keeps its size and modification time.
    timeout_s: time budget for waiting on another process and downloading; the smaller of it
        and env `ModelDataDownloadTimeoutInSeconds` applies; None with neither = no limit.
    concurrency: parallel range GETs; part_size: bytes per ranged GET.
    endpoint_url: S3-compatible endpoint; default `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
    progress: a progress bar when stderr is a terminal, and a summary log line (GB, s, GB/s).
    dest: put the model in this directory (new, empty, or a finished download of the same
        location) instead of the cache; `dest.lock` and `dest.partial/` appear beside it.

    However many processes call this at once, one downloads (under a file lock) and the others
    wait and get the same directory. Every object is checked against its size and a checksum
    (partition manifest sha256, S3 checksum header, or single/multipart ETag MD5) before the
    directory appears, complete, by an atomic rename; a DONE marker with the manifest follows.
    A killed or timed-out download resumes at the next call; a corrupt or changed one is deleted.
    Where the model's directory holds nothing but one subdirectory, that subdirectory is
    returned (model_root), as DJLServing does.
    Raises StorageError (a ShardserveError) with the cause and the object for every failure.
    """
    loc = parse_location(str(location))
    if isinstance(loc, LocalLocation) and not loc.is_archive:
        if dest is not None:
            raise StorageError(f"{loc.path} is already a local model directory: use it as it is")
        return model_root(loc.path)
    if dest is not None:
        target, owned = Path(dest).expanduser().absolute(), False
    else:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        target, owned = root / _entry_name(loc, s3.endpoint(endpoint_url)), True
    deadline = Deadline(effective_timeout(timeout_s))
    options = TransferOptions(concurrency=concurrency, part_size=part_size, progress=progress)
    if isinstance(loc, LocalLocation):
        build = partial(_from_archive_file, loc)
    else:
        build = partial(
            _from_s3, loc, options=options, deadline=deadline, endpoint_url=endpoint_url
        )
    identity = {"location": str(loc), **_archive_file_identity(loc)}
    done = ensure(target, build, deadline=deadline, what=str(loc), owned=owned, identity=identity)
    return model_root(done)


def model_root(directory: Path) -> Path:
    """The model's own directory: `directory`, or its only subdirectory when it holds nothing
    else but hidden entries (our DONE marker among them). `tar -czf model.tar.gz mymodel/` packs
    the files one level down, and DJLServing serves such an artifact from that subdirectory.
    A lone `code/` is SageMaker's place for serving.properties, model.py and requirements.txt,
    which the loader looks for there: that one is the artifact's own."""
    try:
        entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    except OSError:
        return directory  # the loader names the unreadable directory itself
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name != "code":
        return entries[0]
    return directory


def effective_timeout(timeout_s: float | None) -> float | None:
    """The smaller of `timeout_s` and SageMaker's env limit (either may be absent)."""
    raw = os.environ.get(SAGEMAKER_TIMEOUT_ENV)
    limits = [t for t in (timeout_s, _env_seconds(raw)) if t is not None]
    return min(limits) if limits else None


def _env_seconds(raw: str | None) -> float | None:
    if not raw:
        return None
    value = parse_seconds(raw)
    if value is None:  # NaN too: Deadline would refuse it, naming no variable
        raise ValueError(f"{SAGEMAKER_TIMEOUT_ENV} must be a finite number of seconds > 0, got {raw!r}")
    return value


def _entry_name(loc: Location, endpoint: str | None) -> str:
    """Readable and unique: the location's tail plus a hash of where it really is."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", str(loc).split("://")[-1]).strip("_")[-60:]
    digest = hashlib.sha256(f"{endpoint or ''}|{loc}".encode()).hexdigest()
    return f"{tail}-{digest[:12]}"


def _archive_file_identity(loc: Location) -> dict:
    """A local archive rebuilt in place keeps its path: its size and mtime tell the unpacked
    tree of the old file from the new one (hashing it would cost a full read every call)."""
    if not isinstance(loc, LocalLocation):
        return {}
    try:
        st = loc.path.stat()
    except OSError as e:
        raise StorageError(f"cannot read {loc.path}: {e.strerror or e}") from None
    return {"archive_file": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}


def _from_archive_file(loc: LocalLocation, work: Path) -> tuple[Path, dict]:
    return _unpacked(loc.path, work / "tree", {})


def _unpacked(archive_path: Path, tree: Path, manifest: dict) -> tuple[Path, dict]:
    remove(tree)  # an unpack cut short by a kill: start it over
    files = archive.unpack(archive_path, tree)
    return tree, {**manifest, "files": files}


def _from_s3(
    loc: S3Location, work: Path, *, options: TransferOptions, deadline: Deadline, endpoint_url
) -> tuple[Path, dict]:
    client = s3.make_client(endpoint_url, concurrency=options.concurrency, deadline=deadline)
    objects = s3.list_objects(client, loc)
    journal = Journal(work / "journal")

    def get(
        objs: list[s3.RemoteObject], tree: Path, opts: TransferOptions = options, sha=None
    ) -> dict:
        return download(
            client,
            loc.bucket,
            objs,
            tree,
            journal,
            options=opts,
            deadline=deadline,
            label=str(loc),
            sha256=sha,
        )

    info = {"endpoint": s3.endpoint(endpoint_url)}
    if len(objects) == 1 and objects[0].key == loc.key and loc.is_archive:
        get(objects, work / "archive")
        return _unpacked(
            work / "archive" / objects[0].relpath,
            work / "tree",
            {**info, "archive": objects[0].etag},
        )
    tree, files, sha = work / "tree", {}, {}
    manifests = [o for o in objects if o.relpath == MANIFEST]
    if manifests:  # first, so its sha256s replace the store's checksums for the other files
        files = get(manifests, tree, replace(options, progress=False))
        sha = _manifest_sha(tree / MANIFEST, objects)
    rest = [o for o in objects if o.relpath != MANIFEST]
    if rest:
        files.update(get(rest, tree, sha=sha))
    return tree, {**info, "files": {o.relpath: files[o.relpath] for o in objects}}


def _manifest_sha(path: Path, objects: list[s3.RemoteObject]) -> dict[str, str]:
    sizes = {o.relpath: o.size for o in objects}
    digests = file_digests(path)
    for rel, (size, _) in digests.items():
        if rel in sizes and size is not None and size != sizes[rel]:
            raise StorageError(
                f"{path.name} says {rel} has {size} bytes, but the store holds {sizes[rel]}"
            )
    return {rel: sha for rel, (_, sha) in digests.items()}
