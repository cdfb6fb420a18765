"""Reading a pre-sharded rank file at disk speed, and the phases a load spent its time in.

`read_rank_file` (GPU ranks): the safetensors file is read front to back in large chunks
(chunk_bytes, default 128 MiB) by a few threads at once (positional reads release the GIL, so
the disk sees several requests in flight), into pinned host buffers used in turn (num_buffers,
default 2). Once a chunk is in, the pieces of the parameters it holds are copied to the GPU
asynchronously on a side stream, straight into the parameters' bytes, while the next chunk is
already being read; a buffer is refilled only after its copies have finished (a CUDA event).
Python work is per tensor piece (a few per tensor), never per element or per page.
Integrity: when the manifest has per-block sha256s, each block is hashed by the thread that
read it, in parallel, instead of a separate whole-file pass before the load.
direct=True opens the file with O_DIRECT: the disk writes straight into the pinned buffers,
skipping the page cache (no second copy, no cache to evict; every load is a cold read). Where the
file system refuses O_DIRECT, or the chunk layout is not page-aligned, reads are buffered.

Peak host memory: num_buffers * chunk_bytes of pinned buffers (256 MiB by default), whatever the
model size; the page cache holds what the kernel keeps. A parameter stored in another dtype than
the file's is staged in device memory (one tensor) and converted there.

`read_with_safetensors` is the CPU path (safe_open, memory-mapped, one tensor at a time).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from shardserve.errors import ModelLoadError

DEFAULT_CHUNK = 128 << 20
_ALIGN = 4096  # O_DIRECT: buffer addresses, file offsets and lengths in whole pages
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_EIGHT_BIT = (torch.int8, torch.float8_e4m3fn)  # quantised weights: never converted on load


@dataclass
class LoadStats:
    """Where a model load's time went (seconds) and how many bytes it read.

    On a GPU reads and copies overlap, so read_s and to_device_s are the time the loader *waited*
    for each; with verify_s and build_s they add up to about total_s.
    """

    build_s: float = 0.0  # model built on meta, parameters allocated on the device
    verify_s: float = 0.0  # whole-file sha256 before reading (no block hashes in the manifest)
    read_s: float = 0.0  # waiting for file reads into host buffers (block hashes included)
    to_device_s: float = 0.0  # waiting for host-to-device copies not hidden behind reads
    total_s: float = 0.0
    bytes_read: int = 0
    direct_io: bool = False  # the rank file was read with O_DIRECT

    def as_dict(self) -> dict:
        loading = self.total_s - self.build_s
        return asdict(self) | {"GBps": self.bytes_read / loading / 1e9 if loading > 0 and self.bytes_read else 0.0}


@dataclass
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offsets of the tensor's bytes
    end: int


def read_header(path: Path) -> list[_Entry]:
    """The tensors of a safetensors file, in file order."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        base = 8 + n
        entries = [
            _Entry(name, _DTYPES[v["dtype"]], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1])
            for name, v in header.items() if name != "__metadata__"
        ]
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({e!r})") from None
    return sorted(entries, key=lambda e: e.begin)


def check_against(path: Path, entries: list[_Entry], params: dict[str, torch.Tensor]) -> None:
    """Every parameter present with its shape; 8-bit tensors only into 8-bit parameters."""
    names = {e.name for e in entries}
    missing = sorted(set(params) - names)
    if missing:
        raise ModelLoadError(f"{path}: missing tensor(s) {missing[:5]}")
    for e in entries:
        param = params.get(e.name)
        if param is None:
            raise ModelLoadError(f"{path}: unexpected tensor {e.name!r}")
        if tuple(param.shape) != e.shape:
            raise ModelLoadError(f"{path}: tensor {e.name!r} has shape {list(e.shape)}, expected {list(param.shape)}")
        if (e.dtype in _EIGHT_BIT or param.dtype in _EIGHT_BIT) and e.dtype != param.dtype:
            raise ModelLoadError(
                f"{path}: tensor {e.name!r} is {e.dtype} but the model holds {param.dtype} there: load the "
                "checkpoint with the quantization it was partitioned with"
            )


def read_with_safetensors(path: Path, params: dict[str, torch.Tensor], stats: LoadStats | None = None) -> None:
    """The plain path (CPU): safe_open, one tensor at a time, copied into its parameter."""
    from safetensors import safe_open

    entries = read_header(path)
    check_against(path, entries, params)
    started = time.perf_counter()
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for e in entries:
            params[e.name].data.copy_(f.get_tensor(e.name))
    if stats is not None:
        stats.read_s += time.perf_counter() - started
        stats.bytes_read += sum(e.end - e.begin for e in entries)


def read_rank_file(
    path: str | Path, params: dict[str, torch.Tensor], *, chunk_bytes: int = DEFAULT_CHUNK, num_buffers: int = 2,
    threads: int = 8, block_sha256: list[str] | None = None, block_bytes: int | None = None,
    direct: bool = False, stats: LoadStats | None = None,
) -> LoadStats:
    """Fill `params` (name -> contiguous tensor, all on one device) from the safetensors file.

    block_sha256/block_bytes: the manifest's hashes of consecutive block_bytes blocks of the file,
    checked as they are read (ModelLoadError on a mismatch). Works on CPU tensors too
    (synchronous copies, no pinning), which is how the chunk logic is tested without a GPU.
    """
    path, stats = Path(path), stats if stats is not None else LoadStats()
    entries = read_header(path)
    check_against(path, entries, params)
    size = path.stat().st_size
    if entries and entries[-1].end > size:
        raise ModelLoadError(f"{path}: {size} bytes, but its header needs {entries[-1].end}: file is truncated")
    piece = block_bytes if block_sha256 is not None else max(1 << 20, chunk_bytes // threads)
    chunk_bytes = -(-chunk_bytes // piece) * piece  # whole pieces (hash blocks) per chunk
    if block_sha256 is not None and len(block_sha256) != -(-size // piece):
        raise ModelLoadError(f"{path}: {size} bytes need {-(-size // piece)} block hashes, the manifest has {len(block_sha256)}")
    device = next(iter(params.values())).device if params else torch.device("cpu")
    copier = _Copier(entries, params, device)
    bufs = [_page_aligned(chunk_bytes, pin=device.type == "cuda") for _ in range(num_buffers)]
    views = [memoryview(b.numpy()) for b in bufs]
    fd, stats.direct_io = _open(path, direct and piece % _ALIGN == 0 and chunk_bytes % _ALIGN == 0)
    try:
        if not stats.direct_io:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with ThreadPoolExecutor(threads, thread_name_prefix="fast-read") as pool:
            pending: deque[tuple[int, int, int, list[Future]]] = deque()
            for j, start in enumerate(range(0, size, chunk_bytes)):
                end, b = min(start + chunk_bytes, size), j % num_buffers
                stats.to_device_s += copier.wait_buffer(b)
                reads = [
                    pool.submit(_read_piece, fd, views[b], lo - start, lo, min(lo + piece, end),
                                block_sha256[lo // piece] if block_sha256 is not None else None, stats.direct_io)
                    for lo in range(start, end, piece)
                ]
                pending.append((start, end, b, reads))
                if len(pending) == num_buffers:  # every buffer is being read: finish the oldest
                    stats.read_s += _finish(path, copier, bufs, *pending.popleft())
            while pending:
                stats.read_s += _finish(path, copier, bufs, *pending.popleft())
    finally:
        os.close(fd)
    stats.to_device_s += copier.drain()
    stats.bytes_read += size
    return stats


def _page_aligned(nbytes: int, pin: bool) -> torch.Tensor:
    """A uint8 buffer whose first byte sits on a page boundary (O_DIRECT needs it)."""
    raw = torch.empty(nbytes + _ALIGN, dtype=torch.uint8, pin_memory=pin)
    skip = -raw.data_ptr() % _ALIGN
    return raw[skip : skip + nbytes]


def _open(path: Path, direct: bool) -> tuple[int, bool]:
    """(fd, whether it is O_DIRECT): direct if asked and the file system allows it."""
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECT), True
        except OSError:
            pass  # e.g. tmpfs: buffered reads instead
    return os.open(path, os.O_RDONLY), False


def _read_piece(fd: int, view: memoryview, at: int, lo: int, hi: int, sha256: str | None, direct: bool) -> bool:
    """file[lo:hi] -> view[at : at + hi - lo]; False if its block hash differs. O_DIRECT reads
    whole pages: the file's last piece is asked for up to the next page boundary (the buffer
    has room, chunks being whole pages) and comes back short at the end of the file."""
    want = hi - lo
    asked = -(-want // _ALIGN) * _ALIGN if direct else want
    target = view[at : at + asked]
    done = 0
    while done < want:
        n = os.preadv(fd, [target[done:]], lo + done)
        if n <= 0:
            raise ModelLoadError(f"unexpected end of file at byte {lo + done}")
        done += n
    return sha256 is None or hashlib.sha256(target[:want]).hexdigest() == sha256


def _finish(path: Path, copier: _Copier, bufs, start: int, end: int, b: int, reads: list[Future]) -> float:
    """Wait for one chunk's reads, then queue its copies; returns the seconds waited."""
    t0 = time.perf_counter()
    ok = [r.result() for r in reads]
    waited = time.perf_counter() - t0
    if not all(ok):
        raise ModelLoadError(f"{path}: sha256 of bytes {start}..{end} differs from the manifest: file is damaged")
    copier.copy_chunk(bufs[b], start, end, b)
    return waited


class _Copier:
    """Copies the bytes of each chunk into the parameters (async on a side stream on CUDA)."""

    def __init__(self, entries: list[_Entry], params: dict[str, torch.Tensor], device: torch.device):
        self.entries, self.params, self.device = entries, params, device
        self.first = 0  # entries before this one are complete
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.events: dict[int, torch.cuda.Event] = {}
        self.staged: dict[str, torch.Tensor] = {}

    def _target(self, e: _Entry) -> torch.Tensor:
        """Flat bytes the entry is copied into: the parameter itself, or a staging tensor when
        its dtype differs (converted once complete)."""
        param = self.params[e.name]
        if param.dtype == e.dtype:
            return param.data.view(-1).view(torch.uint8)
        if e.name not in self.staged:
            self.staged[e.name] = torch.empty(e.end - e.begin, dtype=torch.uint8, device=self.device)
        return self.staged[e.name]

    def copy_chunk(self, buf: torch.Tensor, start: int, end: int, b: int) -> None:
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            i = self.first
            while i < len(self.entries) and self.entries[i].begin < end:
                e = self.entries[i]
                lo, hi = max(e.begin, start), min(e.end, end)
                if hi > lo:
                    dst = self._target(e)
                    dst[lo - e.begin : hi - e.begin].copy_(buf[lo - start : hi - start], non_blocking=True)
                if e.end <= end:  # complete
                    if e.name in self.staged:
                        staged = self.staged.pop(e.name)
                        self.params[e.name].data.copy_(staged.view(e.dtype).view(e.shape))
                    if i == self.first:
                        self.first += 1
                i += 1
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
                self.events[b] = event

    def wait_buffer(self, b: int) -> float:
        """Block until buffer b's copies are done (it is about to be refilled)."""
        event = self.events.pop(b, None)
        if event is None:
            return 0.0
        t0 = time.perf_counter()
        event.synchronize()
        return time.perf_counter() - t0

    def drain(self) -> float:
        t0 = time.perf_counter()
        if self.stream is not None:
            self.stream.synchronize()
        self.events.clear()
        return time.perf_counter() - t0
