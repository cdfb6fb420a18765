"""`shardserve download LOCATION [--to DIR]`: fetch a model artifact the way the server does."""

from __future__ import annotations

import argparse
import logging


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "download",
        help="download a model (s3://, archive) once, verified, into a directory",
        description="Download s3://bucket/prefix, s3://bucket/model.tar.gz or unpack a local "
        "archive, verified, into DIR (or the shared cache); prints the model directory.",
    )
    p.add_argument(
        "location", help="s3://bucket/prefix, s3://bucket/model.tar.gz, a .tar.gz/.zip file"
    )
    p.add_argument(
        "--to",
        dest="dest",
        metavar="DIR",
        help="target directory (new or empty); "
        "default: the cache ($SERVING_DOWNLOAD_DIR or ~/.cache/shardserve)",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="cache root when --to is not given")
    p.add_argument("--concurrency", type=_positive_int, default=8, help="parallel range GETs (8)")
    p.add_argument("--part-size-mb", type=_positive_int, default=64, help="MiB per range GET (64)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="give up after this long")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # argparse would name this function in its message
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0, refused here with the flag's name rather
    than by the download under its parameter's."""
    from shardserve.storage.deadline import parse_seconds

    value = parse_seconds(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from shardserve.storage import fetch  # boto3 and friends only when the command runs

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("botocore").setLevel(logging.WARNING)  # "Found credentials in env..."

    path = fetch.fetch_model(
        args.location,
        dest=args.dest,
        cache_dir=args.cache_dir,
        timeout_s=args.timeout,
        concurrency=args.concurrency,
        endpoint_url=args.endpoint_url,
        progress=not args.no_progress,
        part_size=args.part_size_mb << 20,
    )
    print(path)
    return 0
