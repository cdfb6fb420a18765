"""`shardserve serve [LOCATION ...]`. Light to import: the server loads only when it runs."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve models over HTTP (SageMaker, DJLServing, TGI and OpenAI APIs)",
        description="Serve models. LOCATION: a model dir, a model.tar.gz or an s3:// prefix, "
        "optionally NAME=LOCATION. Default: /opt/ml/model if it exists, else the built-in model.",
    )
    p.add_argument("locations", nargs="*", metavar="LOCATION")
    p.add_argument("--host", default="0.0.0.0")
    # A string default: argparse checks it with port_number, and only when serve runs.
    p.add_argument("--port", type=port_number, default=os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"),
                   help="default: $SAGEMAKER_BIND_TO_PORT, else 8080")
    p.add_argument("--api-key", default=None,
                   help="require this key on inference routes (default: $SHARDSERVE_API_KEY)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="larger request bodies get 413")
    p.add_argument("--drain-timeout", type=non_negative_seconds, default=30.0,
                   help="seconds in-flight requests get after SIGTERM")
    p.set_defaults(func=run)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port). Out of range, the socket layer
    fails with an OverflowError traceback only after the models have loaded."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {port}")
    return port


def non_negative_seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0 (nan or inf would make the drain wait
    meaningless or endless)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def parse_locations(locations: list[str]) -> tuple[tuple[str, str], ...]:
    """NAME=LOCATION pairs; a bare location is named after its last path part."""
    from shardserve.serving.model_store import model_name, name_problem

    if not locations:
        locations = [str(SAGEMAKER_MODEL_DIR) if SAGEMAKER_MODEL_DIR.is_dir() else _default_model()]
    pairs = []
    for item in locations:
        name, sep, location = item.partition("=")
        if not sep or "://" in name or "/" in name:
            name, location = model_name(item), item
        if not location:
            raise ValueError(f"{item!r}: NAME=LOCATION needs a location after the '='")
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"{item!r}: NAME=LOCATION: {problem}")
        pairs.append((name, location))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}; name them NAME=LOCATION")
    return tuple(pairs)


def _default_model() -> str:
    from shardserve.assets import default_model_path

    return str(default_model_path())


def run(args: argparse.Namespace) -> int:
    from shardserve.serving.app import create_app
    from shardserve.serving.server import run_server
    from shardserve.serving.settings import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, ServerSettings

    if args.api_key is not None and not args.api_key.strip():  # --api-key "$KEY" with KEY unset
        raise ValueError("--api-key is empty: the routes would take requests without a key; give a key "
                         f"or leave the flag out (then ${API_KEY_ENV} is used, if set)")
    if args.max_body_bytes is not None and args.max_body_bytes < 1:
        raise ValueError(f"--max-body-bytes must be >= 1, got {args.max_body_bytes}")
    settings = ServerSettings(
        models=parse_locations(args.locations),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=args.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        drain_timeout_s=args.drain_timeout,
    )
    app = create_app(settings)
    run_server(app, args.host, args.port, app.state.ctx.lifecycle, settings.drain_timeout_s,
               log_level=getattr(args, "log_level", "info"))
    return 0
