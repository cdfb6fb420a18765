"""`shardserve partition`: write a pre-sharded checkpoint for a tensor-parallel degree."""

from __future__ import annotations

import argparse


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

    out = partition(args.model, args.out, args.tp, args.dtype, args.quantize)
    kind = f"{args.quantize} " if args.quantize else ""
    print(f"wrote a tensor-parallel-{args.tp} {kind}checkpoint to {out}")
    return 0
