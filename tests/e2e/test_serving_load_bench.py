"""The HTTP load generator (shardserve.bench.load) against the live server."""

from __future__ import annotations

import asyncio

from shardserve.bench.load import LoadConfig, _pct, format_report, run_load


def test_load_generator_measures_a_live_server(server):
    config = LoadConfig(url=server.url, concurrency=2, requests=4, max_tokens=5, model="llama",
                        ttft_slo_s=60.0, tpot_slo_s=60.0)
    report = asyncio.run(run_load(config))
    assert report["failed"] == 0 and report["requests"] == 4
    assert report["output_tokens_per_s"] > 0 and 0 < report["ttft_p50_s"] <= report["ttft_p99_s"]
    assert report["itl_p50_s"] > 0 and report["goodput_requests_per_s"] == report["requests_per_s"]
    assert "TTFT" in format_report(report)


def test_nearest_rank_percentiles():
    values = [float(i) for i in range(1, 101)]
    assert (_pct(values, 50), _pct(values, 99), _pct(values, 100), _pct([3.0], 99)) == (50.0, 99.0, 100.0, 3.0)
