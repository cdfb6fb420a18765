"""HTTP load generator: N concurrent clients stream M completions from a running server and
report time to first token (TTFT), inter-token latency (ITL), end-to-end latency, requests/s,
output tokens/s and, given SLOs, goodput (requests/s that met them).

It speaks the OpenAI streaming API (`/v1/completions`, SSE), so it measures any server that
does: shardserve, vLLM, TGI's OpenAI route. Fixed-length outputs use `ignore_eos`, an extension
that shardserve and vLLM accept (turn it off with --no-ignore-eos for others).

    python -m shardserve.bench.load --url http://127.0.0.1:8080 --concurrency 8 --requests 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass, field

PROMPTS = (
    "It is a truth universally acknowledged, that",
    "The quick brown fox",
    "Once upon a time, in a small village by the sea,",
    "Large language models are served by",
    "The weather today is",
    "In the beginning",
    "My dear friend, I write to tell you that",
    "The most important thing about tensor parallelism is",
)


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    output_tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)  # between streamed chunks after the first
    error: str = ""

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (vLLM's TPOT)."""
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


@dataclass(frozen=True)
class LoadConfig:
    url: str
    concurrency: int = 8
    requests: int = 64
    max_tokens: int = 64
    model: str | None = None
    ignore_eos: bool = True
    api_key: str | None = None
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    timeout_s: float = 600.0


async def _one(client, config: LoadConfig, model: str, prompt: str) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": config.max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    if config.ignore_eos:
        body["ignore_eos"] = True
    start = time.perf_counter()
    result = RequestResult(ok=False)
    last = None
    usage_tokens, text_chunks = None, 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return RequestResult(ok=False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                now = time.perf_counter()
                if chunk.get("error"):  # the server failed mid-stream (its status line was sent)
                    return RequestResult(ok=False, error=f"error event: {json.dumps(chunk['error'])[:200]}")
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices") or not chunk["choices"][0].get("text"):
                    continue
                text_chunks += 1
                if last is None:
                    result.ttft_s = now - start
                else:
                    result.gaps_s.append(now - last)
                last = now
    except Exception as e:  # a load test reports failures, it does not stop on them
        return RequestResult(ok=False, error=f"{type(e).__name__}: {e}")
    result.e2e_s = time.perf_counter() - start
    # Without usage (a server that ignores stream_options), the chunks with text: at least one
    # token each, so TPOT comes out at most too high and an SLO is never met by mistake.
    result.output_tokens = usage_tokens if usage_tokens is not None else text_chunks
    result.ok = last is not None
    return result


async def run_load(config: LoadConfig) -> dict:
    """Run the load and return the report (see `summarize`)."""
    import httpx

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    async with httpx.AsyncClient(base_url=config.url.rstrip("/"), headers=headers, limits=limits,
                                 timeout=config.timeout_s) as client:
        model = await _model(client, config.url, config.model)
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(config.requests):
            queue.put_nowait(PROMPTS[i % len(PROMPTS)])
        results: list[RequestResult] = []

        async def worker():
            while not queue.empty():
                results.append(await _one(client, config, model, queue.get_nowait()))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        duration = time.perf_counter() - started
    return summarize(results, duration, config, model)


async def _model(client, url: str, named: str | None) -> str:
    """The model the load asks for: `named`, else the server's first. ShardserveError naming
    --url if no HTTP answer comes back (connection refused, unknown host: else every request of
    the load would fail the same way) or, with no model named, if the answer is not an OpenAI
    model list (a wrong URL, not a load-test result). With a model named, any status counts as
    reachable: a 401 or 404 is the server answering, and the load's requests report it."""
    import httpx

    from shardserve.errors import ShardserveError

    try:
        r = await client.get("/v1/models")
        if named:
            return named
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except httpx.HTTPError as e:
        raise ShardserveError(f"--url {url}: {type(e).__name__}: {e}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise ShardserveError(f"--url {url}: /v1/models is not an OpenAI model list") from None


def summarize(results: list[RequestResult], duration_s: float, config: LoadConfig, model: str) -> dict:
    ok = [r for r in results if r.ok]
    gaps = [g for r in ok for g in r.gaps_s]
    tpots = [r.tpot_s for r in ok if r.output_tokens > 1]  # one token has no time per token (vLLM's)
    good = [r for r in ok if (config.ttft_slo_s is None or r.ttft_s <= config.ttft_slo_s)
            and (config.tpot_slo_s is None or r.tpot_s <= config.tpot_slo_s)]
    report = {
        "model": model, "concurrency": config.concurrency, "requests": len(results), "failed": len(results) - len(ok),
        "duration_s": duration_s, "requests_per_s": len(ok) / duration_s,
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / duration_s,
        "ttft_p50_s": _pct([r.ttft_s for r in ok], 50), "ttft_p99_s": _pct([r.ttft_s for r in ok], 99),
        "itl_p50_s": _pct(gaps, 50), "itl_p99_s": _pct(gaps, 99),
        "tpot_mean_s": statistics.fmean(tpots) if tpots else None,
        "e2e_p50_s": _pct([r.e2e_s for r in ok], 50), "e2e_p99_s": _pct([r.e2e_s for r in ok], 99),
    }
    if config.ttft_slo_s is not None or config.tpot_slo_s is not None:
        report["goodput_requests_per_s"] = len(good) / duration_s
    errors = sorted({r.error for r in results if not r.ok})
    if errors:
        report["errors"] = errors[:5]
    return report


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: P99 of 64 samples is a real sample); None when
    there are no samples (NaN would make --json print invalid JSON)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q / 100) - 1))]


def format_report(report: dict) -> str:
    ms = lambda s: "-" if s is None else f"{s * 1000:.1f} ms"  # noqa: E731
    lines = [
        f"model {report['model']}: {report['requests']} requests ({report['failed']} failed), "
        f"concurrency {report['concurrency']}, {report['duration_s']:.1f} s",
        f"  throughput  {report['requests_per_s']:.2f} req/s, {report['output_tokens_per_s']:.1f} output tok/s",
        f"  TTFT        P50 {ms(report['ttft_p50_s'])}  P99 {ms(report['ttft_p99_s'])}",
        f"  ITL         P50 {ms(report['itl_p50_s'])}  P99 {ms(report['itl_p99_s'])}  (TPOT mean {ms(report['tpot_mean_s'])})",
        f"  end-to-end  P50 {ms(report['e2e_p50_s'])}  P99 {ms(report['e2e_p99_s'])}",
    ]
    if "goodput_requests_per_s" in report:
        lines.append(f"  goodput     {report['goodput_requests_per_s']:.2f} req/s within the SLOs")
    lines += [f"  error: {e}" for e in report.get("errors", [])]
    return "\n".join(lines)


def check_url(url: str) -> None:
    """ValueError naming --url unless it is http(s)://HOST[...]: httpx would fail later, with a
    traceback that does not say which flag was wrong."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (parsing the port raises ValueError when it is out of range)
    except ValueError as e:
        raise ValueError(f"--url {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be http://HOST[:PORT] or https://..., got {url!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--concurrency", type=int, default=8, help="clients sending at once")
    p.add_argument("--requests", type=int, default=64, help="requests in total")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--model", default=None, help="model name (default: the server's first)")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let requests stop at EOS (for servers without the ignore_eos extension)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--ttft-slo-ms", type=float, default=None, help="goodput: TTFT limit")
    p.add_argument("--tpot-slo-ms", type=float, default=None, help="goodput: time-per-output-token limit")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    for name in ("concurrency", "requests", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_url(args.url)
    for name in ("ttft_slo_ms", "tpot_slo_ms"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
    config = LoadConfig(
        url=args.url, concurrency=args.concurrency, requests=args.requests, max_tokens=args.max_tokens,
        model=args.model, ignore_eos=args.ignore_eos, api_key=args.api_key,
        ttft_slo_s=None if args.ttft_slo_ms is None else args.ttft_slo_ms / 1000,
        tpot_slo_s=None if args.tpot_slo_ms is None else args.tpot_slo_ms / 1000,
    )
    report = asyncio.run(run_load(config))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m shardserve.bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
