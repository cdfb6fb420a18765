"""`shardserve bench`: latency/throughput of our engine and the Accelerate baseline side by side
(`bench serve ...`: the HTTP load test, where shardserve.bench.load is installed).
Light to import: torch and the engines load only when a benchmark runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from shardserve.storage.disk import output_dir_base


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency of the TP engine vs Accelerate on the same GPUs and weights",
        description="Times our tensor-parallel engine and the Accelerate pipeline baseline in one run "
        "(same GPUs, weights and prompts), after checking our logits against transformers.",
    )
    p.add_argument("--model", help="model dir, or a catalog name (opt-30b, bloom, llama-3-8b...) with --random-weights")
    p.add_argument("--random-weights", action="store_true", help="random weights made on the GPUs (no checkpoint)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree = GPUs used by both engines")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=10, help="timed batches of our engine")
    p.add_argument("--baseline-reps", type=int, default=3, help="timed batches of the Accelerate baseline")
    p.add_argument("--engines", default="tp,accelerate", help="comma-separated: tp, accelerate")
    p.add_argument("--dtype", default=None, help="fp16 or bf16 (default: the checkpoint's)")
    p.add_argument("--check-tokens", type=int, default=16, help="greedy tokens compared with transformers (0: skip)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="EngineConfig field for our engine, e.g. enforce_eager=true, extra.fast_all_reduce=false")
    p.add_argument("--out", default="bench-results", help="directory for the JSON and PNG reports")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after timing, profile one more batch of our engine on every rank into DIR/<variant>/")
    p.set_defaults(func=run)
    modes = p.add_subparsers(dest="bench_mode", metavar="MODE")
    if importlib.util.find_spec("shardserve.bench.load") is not None:
        from shardserve.bench import load  # standard library only: cheap to import

        s = modes.add_parser("serve", help="HTTP load test of a running server (TTFT, ITL, goodput)")
        load.add_arguments(s)
        s.set_defaults(func=load.main)


def run(args: argparse.Namespace) -> int:
    from shardserve.bench.latency import BenchConfig, run_bench
    from shardserve.engine.executor import check_visible_gpus

    if not args.model:
        raise ValueError("--model is required (a model dir, or a catalog name with --random-weights)")
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    unknown = set(engines) - {"tp", "accelerate"}
    if unknown or not engines:
        raise ValueError(f"--engines must list tp and/or accelerate, got {args.engines!r}")
    for name in ("tp", "batch", "prompt_len", "reps", "baseline_reps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    # Decode ms/step is (latency - TTFT) / (new_tokens - 1): one new token has no decode step.
    if args.new_tokens < 2:
        raise ValueError(f"--new-tokens must be >= 2 (decode is timed per step), "
                         f"got {args.new_tokens}")
    if args.check_tokens < 0:
        raise ValueError(f"--check-tokens must be >= 0 (0: skip), got {args.check_tokens}")
    # Checked before the benchmark runs, which takes minutes before it writes anything.
    check_out_dir(Path(args.out), "--out")
    if args.profile:
        check_out_dir(Path(args.profile), "--profile")
    # Now, not once loading on a GPU that does not exist, after the baseline's reference run.
    check_visible_gpus(args.tp, "--tp")
    options = parse_engine_options(args.engine_option)
    check_engine_options(args, options)
    cfg = BenchConfig(
        model=args.model, random_weights=args.random_weights, tp=args.tp, batch=args.batch,
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, reps=args.reps,
        baseline_reps=args.baseline_reps, engines=engines, dtype=args.dtype,
        check_tokens=args.check_tokens, out_dir=Path(args.out),
        variants={"tp": options},
        profile_dir=Path(args.profile) if args.profile else None,
    )
    results, context = run_bench(cfg)
    failed = [k for k, c in context.get("correctness", {}).items() if c and not c["passed"]]
    return 1 if failed else 0


def check_out_dir(path: Path, flag: str) -> None:
    """ValueError naming `flag` unless `path` is, or can be made, a writable directory.
    Creates nothing: a refused run leaves no empty directories behind."""
    existing, _ = output_dir_base(path, flag)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable")


# EngineConfig fields the benchmark sets from its own flags: an --engine-option for one of them
# would run our engine differently from the baseline and from what the report says.
_OWN_FLAGS = {"model": "--model", "tensor_parallel_size": "--tp", "dtype": "--dtype",
              "load_format": "--random-weights", "devices": "--tp"}


def check_engine_options(args: argparse.Namespace, options: dict) -> None:
    """ValueError for a bad --engine-option value now, by building the EngineConfig our engine
    will get (EngineConfig checks values alone, without loading anything), instead of after
    the minutes the baseline's reference run takes."""
    from shardserve.config import EngineConfig

    for key, flag in _OWN_FLAGS.items():
        if key in options:
            raise ValueError(f"--engine-option {key}: the benchmark sets it from {flag}; use that")
    try:
        EngineConfig(model=args.model, tensor_parallel_size=args.tp, **options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--engine-option: {e}") from None


def parse_engine_options(items: list[str]) -> dict:
    """["enforce_eager=true", "extra.fused_kernels=false"] -> EngineConfig overrides.
    Unknown keys are refused here, not by EngineConfig(...) after the reference run."""
    from dataclasses import fields

    from shardserve.config import EngineConfig

    known = {f.name for f in fields(EngineConfig)}
    options: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--engine-option must be KEY=VALUE, got {item!r}")
        if ("extra" if key.startswith("extra.") else key) not in known:
            raise ValueError(f"--engine-option {item!r}: unknown key {key!r} "
                             f"(EngineConfig fields: {', '.join(sorted(known))}, or extra.NAME)")
        value = _parse_value(raw)
        if key.startswith("extra."):
            options.setdefault("extra", {})[key[len("extra."):]] = value
        else:
            options[key] = value
    return options


def _parse_value(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
