"""Benchmark figures: percentiles, derived columns, table and JSON."""

from __future__ import annotations

import json

import pytest

from shardserve.bench.report import EngineResult, percentile, table, write_reports


def _result(engine: str, latency: float) -> EngineResult:
    return EngineResult(
        engine=engine, model="m", precision="float16", batch=4, tp=4, gpus=4, prompt_len=32, new_tokens=256,
        load_s=10.0, warmup_s=2.0, latencies_s=[latency, latency * 1.1, latency * 0.9], ttfts_s=[0.05],
        bytes_per_step_per_gpu=15e9, copy_bandwidth=4e12,
    )


def test_percentile_interpolates_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0], 90) == pytest.approx(2.8)


def test_summary_derives_step_time_throughput_and_bandwidth():
    s = _result("tp", 1.05).summary()
    assert s["p50_ms"] == pytest.approx(1050)
    assert s["decode_ms_per_step"] == pytest.approx((1.05 - 0.05) / 255 * 1e3)
    assert s["tokens_per_s"] == pytest.approx(4 * 256 / 1.05)
    assert s["bandwidth_util"] == pytest.approx(15e9 / (1.0 / 255) / 4e12)


def test_table_and_reports(tmp_path):
    results = [_result("tp", 1.0), _result("accelerate", 9.0)]
    text = table(results)
    assert "tp vs accelerate: P50 9.00x faster" in text
    assert text.splitlines()[0].startswith("model")
    paths = write_reports(results, {"machine": "test"}, tmp_path, "run")
    data = json.loads(paths[0].read_text())
    assert data["results"][1]["engine"] == "accelerate" and "summary" in data["results"][0]
