"""Helpers for the device-machine scripts: each stage runs under a time budget, its failure is
logged and does not stop the others, and every figure lands in $OUT/results.json."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

OUT = Path(os.environ.get("OUT", "bench-out"))
OUT.mkdir(parents=True, exist_ok=True)
RESULTS: dict = {}
STARTED = time.time()


def stage(name: str, fn, budget_s: float, deadline_s: float):
    """Run fn() unless fewer than budget_s seconds remain before deadline_s; record its result."""
    left = deadline_s - (time.time() - STARTED)
    if left < budget_s:
        RESULTS[name] = {"skipped": f"{left:.0f} s left < {budget_s} s budget"}
        print(f"== {name}: skipped ({left:.0f} s left)", flush=True)
        return None
    print(f"== {name} (at {time.time() - STARTED:.0f} s)", flush=True)
    t0 = time.time()
    try:
        value = fn()
        RESULTS[name] = {"ok": True, "seconds": round(time.time() - t0, 1), "value": value}
        return value
    except BaseException as e:  # noqa: BLE001 - one failed stage must not lose the others
        traceback.print_exc()
        RESULTS[name] = {"ok": False, "seconds": round(time.time() - t0, 1), "error": repr(e)[:2000]}
        if isinstance(e, KeyboardInterrupt):
            raise
        return None
    finally:
        save()


def save() -> None:
    (OUT / "results.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def finish() -> None:
    """Save, then print every stage's result last (the device reply keeps the output's tail)."""
    save()
    print("\n==== summary")
    for name, r in RESULTS.items():
        print(name, "->", str(r)[:3000])


def run_pytest(args: list[str], timeout_s: int) -> dict:
    import subprocess

    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", str(timeout_s), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60,
                          env=os.environ | {"PYTHONPATH": "src"})
    (OUT / "pytest.log").open("a").write(proc.stdout + proc.stderr)
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-12:]
    print("\n".join(tail), flush=True)
    return {"returncode": proc.returncode, "tail": tail}
