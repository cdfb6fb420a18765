"""`shardserve` command line: argparse only. Each subsystem registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shardserve.errors import ShardserveError

# Each module has `register(subparsers)` adding parsers whose `func(args) -> int | None` runs it.
_COMMAND_MODULES = (
    "shardserve.engine.commands",  # generate
    "shardserve.serving.commands",  # serve
    "shardserve.storage.commands",  # download
    "shardserve.weights.commands",  # partition
    "shardserve.bench.commands",  # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardserve", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # subsystem not installed in this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ShardserveError, ValueError, FileNotFoundError) as e:
        print(f"shardserve {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
