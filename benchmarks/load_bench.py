"""Serving load benchmark: start `shardserve serve` on a model (default: the built-in one), drive
it with shardserve.bench.load at several concurrencies, print one report per level and a JSON
line with every figure.

    python benchmarks/load_bench.py --concurrency 1 4 16 --requests 64 --max-tokens 64
    CUDA_VISIBLE_DEVICES= python benchmarks/load_bench.py ...      # force the CPU on a GPU host
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time

import httpx

from shardserve.bench.load import LoadConfig, format_report, run_load
from shardserve.engine.worker import free_port


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server was not ready within {timeout} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model location (default: the built-in model)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "shardserve.cli", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
           "--port", str(port), *([args.model] if args.model else [])]
    server = subprocess.Popen(cmd)
    try:
        wait_ready(url, server, timeout=300)
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        for concurrency in args.concurrency:
            config = LoadConfig(url=url, concurrency=concurrency, requests=args.requests, max_tokens=args.max_tokens)
            asyncio.run(run_load(LoadConfig(url=url, concurrency=concurrency, requests=concurrency,
                                            max_tokens=4)))  # warm the connections and the engine
            report = asyncio.run(run_load(config))
            print(format_report(report), flush=True)
            print("RESULT " + json.dumps({"machine": machine, "max_tokens": args.max_tokens, **report}), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
