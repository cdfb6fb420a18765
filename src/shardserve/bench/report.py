"""Benchmark results: per-engine figures, the table of the original comparison, JSON and a chart.

Latency is the wall time of one whole batch (all `new_tokens` of every sequence); decode
ms/step is (latency P50 - TTFT P50) / (new_tokens - 1); bandwidth utilisation is the bytes one
GPU must read per decode step (its weights + the KV cache at the mean context) over the decode
step time, divided by the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class EngineResult:
    engine: str  # "tp" | "accelerate"
    model: str
    precision: str
    batch: int
    tp: int  # parallel degree (GPUs working at once: 1 for the pipeline baseline)
    gpus: int
    prompt_len: int
    new_tokens: int
    load_s: float
    warmup_s: float
    latencies_s: list[float]
    ttfts_s: list[float]
    bytes_per_step_per_gpu: float  # weights + KV read by one working GPU per decode step
    copy_bandwidth: float  # bytes/s, measured in this run
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        p50 = percentile(self.latencies_s, 50)
        ttft = percentile(self.ttfts_s, 50) if self.ttfts_s else 0.0
        step = (p50 - ttft) / max(self.new_tokens - 1, 1)
        return {
            "p50_ms": 1e3 * p50,
            "p90_ms": 1e3 * percentile(self.latencies_s, 90),
            "p99_ms": 1e3 * percentile(self.latencies_s, 99),
            "tokens_per_s": self.batch * self.new_tokens / p50,
            "decode_ms_per_step": 1e3 * step,
            "ttft_ms": 1e3 * ttft,
            "bandwidth_util": self.bytes_per_step_per_gpu / step / self.copy_bandwidth if step > 0 else 0.0,
        }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) without numpy."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


_COLUMNS = [
    ("model", "{}"), ("engine", "{}"), ("precision", "{}"), ("batch", "{}"), ("TP", "{}"), ("GPUs", "{}"),
    ("load s", "{:.1f}"), ("warm-up s", "{:.1f}"), ("P50 ms", "{:.0f}"), ("P90 ms", "{:.0f}"),
    ("P99 ms", "{:.0f}"), ("tokens/s", "{:.1f}"), ("decode ms/step", "{:.2f}"), ("TTFT ms", "{:.1f}"),
    ("BW util", "{:.0%}"),
]


def table(results: list[EngineResult]) -> str:
    rows = []
    for r in results:
        s = r.summary()
        values = [r.model, r.engine, r.precision, r.batch, r.tp, r.gpus, r.load_s, r.warmup_s, s["p50_ms"],
                  s["p90_ms"], s["p99_ms"], s["tokens_per_s"], s["decode_ms_per_step"], s["ttft_ms"],
                  s["bandwidth_util"]]
        rows.append([fmt.format(v) for (_, fmt), v in zip(_COLUMNS, values, strict=True)])
    header = [name for name, _ in _COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    by_engine = {r.engine: r.summary() for r in results}
    if "tp" in by_engine and "accelerate" in by_engine:
        ratio = by_engine["accelerate"]["p50_ms"] / by_engine["tp"]["p50_ms"]
        lines.append(f"tp vs accelerate: P50 {ratio:.2f}x faster")
    return "\n".join(lines)


def write_reports(results: list[EngineResult], context: dict, out_dir: Path, stem: str) -> list[Path]:
    """stem.json (everything) and, where matplotlib is importable, stem.png; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"context": context, "results": [asdict(r) | {"summary": r.summary()} for r in results]}
    paths = [out_dir / f"{stem}.json"]
    paths[0].write_text(json.dumps(payload, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    labels = [f"{r.engine}\n{r.precision} x{r.gpus}" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "p50_ms", "latency P50 (ms, lower is better)"),
                           (axes[1], "tokens_per_s", "tokens/s (higher is better)")):
        ax.bar(labels, [r.summary()[key] for r in results], color=["#3b75af", "#ef8636", "#519e3e"][: len(results)])
        ax.set_title(title, fontsize=10)
    r0 = results[0]
    fig.suptitle(f"{r0.model}: batch {r0.batch} x {r0.new_tokens} new tokens", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}.png", dpi=120)
    plt.close(fig)
    return paths + [out_dir / f"{stem}.png"]
