"""Subprocess body for the once-per-host tests: fetch_model in a fresh interpreter.

    python fetch_worker.py LOCATION CACHE_DIR [--kill-after-ranges N]

Prints {"path": ..., "gets": [...]} as JSON. With --kill-after-ranges it SIGKILLs itself right
after the N-th range is journaled: a download killed midway, as a crash or OOM kill would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import install_get_counter  # noqa: E402
from shardserve.storage.fetch import fetch_model  # noqa: E402
from shardserve.storage.journal import Journal  # noqa: E402


def kill_after(ranges: int) -> None:
    record = Journal.record
    count = [0]

    def record_then_die(self, entry):
        record(self, entry)
        count[0] += 1
        if count[0] >= ranges:
            os.kill(os.getpid(), signal.SIGKILL)

    Journal.record = record_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("location")
    parser.add_argument("cache_dir")
    parser.add_argument("--kill-after-ranges", type=int)
    args = parser.parse_args()
    gets = install_get_counter()
    if args.kill_after_ranges:
        kill_after(args.kill_after_ranges)
    path = fetch_model(
        args.location, cache_dir=args.cache_dir, part_size=1 << 20, progress=False, concurrency=2
    )
    print(json.dumps({"path": str(path), "gets": gets}))


if __name__ == "__main__":
    main()
