"""`shardserve partition`: write a pre-sharded checkpoint for a tensor-parallel degree."""

from __future__ import annotations

import argparse
import signal
import threading
from contextlib import contextmanager


def register(subparsers) -> None:
    p = subparsers.add_parser("partition", help="write one checkpoint file per tensor-parallel rank")
    p.add_argument("--model", required=True, help="HF-format model directory")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel degree")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), fp32, fp16 or bf16")
    p.add_argument("--quantize", choices=["int8", "fp8"], default=None,
                   help="store linear weights in 8 bits with per-channel scales (weight-only)")
    p.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shardserve.weights.partition import partition

    with _sigterm_as_exit():
        out = partition(args.model, args.out, args.tp, args.dtype, args.quantize)
    kind = f"{args.quantize} " if args.quantize else ""
    print(f"wrote a tensor-parallel-{args.tp} {kind}checkpoint to {out}")
    return 0


@contextmanager
def _sigterm_as_exit():
    """SIGTERM (a job's time limit, `docker stop`) raises SystemExit(143) while partition runs, so
    that partition removes its half-written output: killed outright, it would leave rank files
    behind without the manifest. Signals reach only the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise SystemExit(128 + signum)
