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


# The levels both logging and uvicorn know: uvicorn fails with a KeyError on any other name.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level(text: str) -> str:
    """argparse type: lower-cased, so that choices= accepts INFO and info alike."""
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardserve", description=__doc__)
    parser.add_argument("--log-level", type=log_level, default="info", choices=LOG_LEVELS,
                        help="debug, info, warning, error or critical (any case)")
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
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    # OSError: file-system errors on user-given paths (permissions, a file where a directory
    # should be). KeyboardInterrupt is not an OSError, so Ctrl-C still exits 130.
    except (ShardserveError, ValueError, OSError) as e:
        print(f"shardserve {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
