"""`shardserve generate`: text from a model directory (default: the built-in model)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text offline from a model directory")
    p.add_argument("--model", default=None, help="HF-format model dir (default: the built-in model)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the model's generation_config.json max_new_tokens, else 64")
    p.add_argument("--min-new-tokens", type=int, default=0)
    # Sampling options left out take the model's generation_config.json values, as on the server.
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    p.add_argument("--tp", default=None, help="tensor-parallel degree: an integer or 'max' "
                   "(default: $TENSOR_PARALLEL_DEGREE, else 1)")
    p.add_argument("--quantize", choices=["int8", "fp8"], default=None, help="8-bit weight-only linear layers")
    p.add_argument("--no-stream", action="store_true", help="print each result when complete")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shardserve import LLM, SamplingParams
    from shardserve.assets import default_model_path
    from shardserve.config import EngineConfig, parse_tp_degree
    from shardserve.engine.executor import check_visible_gpus
    from shardserve.engine.generation_config import (
        SAMPLING_FIELDS,
        read_generation_config,
        sampling_defaults,
    )
    from shardserve.storage.uri import local_model_dir

    model = str(local_model_dir(args.model, "generate")) if args.model else str(default_model_path())
    given = {name: getattr(args, name) for name in SAMPLING_FIELDS}  # its flags, by the same names
    # Read here, not taken from the LLM's: a bad flag fails before the model loads, not after.
    defaults = sampling_defaults(read_generation_config(model), model)
    params = SamplingParams(
        min_new_tokens=args.min_new_tokens,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        stop=args.stop,
        **{"max_new_tokens": 64} | defaults | {k: v for k, v in given.items() if v is not None},
    )
    options = dict(dtype=args.dtype, quantization=args.quantize)
    if args.tp is not None:
        options["tensor_parallel_size"] = parse_tp_degree(args.tp)
        check_visible_gpus(options["tensor_parallel_size"], "--tp")  # before the model loads
    config = EngineConfig.from_env(model, **options)
    with LLM(config=config) as llm:
        if len(args.prompt) == 1 and not args.no_stream:
            sys.stdout.write(args.prompt[0])
            for out in llm.stream(args.prompt[0], params):
                sys.stdout.write(out.delta_text)
                sys.stdout.flush()
            sys.stdout.write(f"\n[{out.finish_reason}, {len(out.token_ids)} tokens]\n")
            return 0
        for prompt, out in zip(args.prompt, llm.generate(args.prompt, params), strict=True):
            print(f"{prompt}{out.text}\n[{out.finish_reason}, {len(out.token_ids)} tokens]\n")
    return 0
