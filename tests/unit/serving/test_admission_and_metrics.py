"""The bounded queue, latency metrics, and `serve` location parsing."""

from __future__ import annotations

import time

import pytest

from shardserve.serving.admission import Admission
from shardserve.serving.commands import parse_locations
from shardserve.serving.http_errors import APIError
from shardserve.serving.metrics import RequestTimer, ServerMetrics


def test_admission_counts_running_and_queued():
    a = Admission(concurrency=2, queue_size=1)
    for _ in range(3):
        a.acquire("m")
    assert (a.running, a.queue_depth) == (2, 1)
    with pytest.raises(APIError) as e:
        a.acquire("m")
    assert e.value.status == 503 and e.value.headers == {"Retry-After": "1"}
    a.release()
    with pytest.raises(APIError):
        a.acquire("m", n=2)  # a batch takes a slot per prompt, all or none
    with a.slot("m"):
        assert a.inflight == 3
    assert a.inflight == 2
    with pytest.raises(APIError) as e:  # more than it ever takes: no retry can fit it
        a.acquire("m", n=4, field="prompt")
    assert e.value.status == 400 and e.value.param == "prompt" and "4 prompts" in e.value.message
    assert a.inflight == 2


def test_request_timer_observes_ttft_itl_and_tokens():
    metrics = ServerMetrics()
    timer = RequestTimer(metrics, "m")
    time.sleep(0.01)
    timer.on_tokens(1)
    timer.on_tokens(2)  # two tokens in one update: two inter-token gaps
    timer.on_tokens(0)
    timer.finish(prompt_tokens=5)  # the 3 tokens it counted
    text = metrics.render()[0].decode()
    assert 'shardserve_time_to_first_token_seconds_count{model="m"} 1.0' in text
    assert 'shardserve_inter_token_latency_seconds_count{model="m"} 2.0' in text
    assert 'shardserve_prompt_tokens_total{model="m"} 5.0' in text
    assert 'shardserve_generation_tokens_total{model="m"} 3.0' in text
    assert 'shardserve_e2e_request_latency_seconds_count{model="m"} 1.0' in text


def test_request_timer_takes_the_engines_first_token_time_from_a_final_output():
    """A non-streaming request's only update comes at its end: the time to first token is the
    engine's first_token_time, and the inter-token gaps share the time after it."""
    metrics = ServerMetrics()
    timer = RequestTimer(metrics, "m")
    time.sleep(0.05)
    first = time.perf_counter()
    time.sleep(0.2)
    timer.on_tokens(3, first_token_time=first)
    text = metrics.render()[0].decode()

    def value(name: str) -> float:
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + '{model="m"}')))

    assert 0.05 <= value("shardserve_time_to_first_token_seconds_sum") < 0.2
    assert value("shardserve_inter_token_latency_seconds_count") == 2
    assert value("shardserve_inter_token_latency_seconds_sum") >= 0.2


def test_parse_locations():
    assert parse_locations(["/models/llama", "small=s3://b/opt/", "/x/model.tar.gz"]) == (
        ("llama", "/models/llama"), ("small", "s3://b/opt/"), ("model", "/x/model.tar.gz"))
    assert parse_locations(["s3://b/p=q"]) == (("p=q", "s3://b/p=q"),)
    with pytest.raises(ValueError, match="unique"):
        parse_locations(["/a/m", "/b/m"])


def test_serve_without_a_location_prefers_the_sagemaker_model_dir(tmp_path, monkeypatch):
    from shardserve.serving import commands

    monkeypatch.setattr(commands, "SAGEMAKER_MODEL_DIR", tmp_path)
    assert parse_locations([]) == ((tmp_path.name, str(tmp_path)),)
    monkeypatch.setattr(commands, "SAGEMAKER_MODEL_DIR", tmp_path / "absent")
    monkeypatch.setattr(commands, "_default_model", lambda: "/pkg/assets/default-model")
    assert parse_locations([]) == (("default-model", "/pkg/assets/default-model"),)
