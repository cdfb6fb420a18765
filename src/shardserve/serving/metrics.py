"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

Counters and histograms are updated on the request path; gauges that describe the present
(queue depth, running requests, KV-cache usage) are read from the models when scraped, so they
can never drift from the truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shardserve_requests", "HTTP requests by route and status code", ["route", "code"], registry=r)
        self.ttft = Histogram("shardserve_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("shardserve_inter_token_latency_seconds", "Time between generated tokens", ["model"],
                             buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("shardserve_e2e_request_latency_seconds", "Request latency, admission to last token",
                             ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("shardserve_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("shardserve_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.load_phase = Gauge("shardserve_model_load_phase_seconds", "Seconds a model spent in each load phase",
                                ["model", "phase"], registry=r)

    def watch_models(self, models: Callable[[], Iterable]) -> None:
        """Report the live state of `models()` (ServedModel objects) at every scrape."""
        self.registry.register(_LiveCollector(models))

    def record_load_phase(self, model: str, phase: str, seconds: float) -> None:
        self.load_phase.labels(model, phase).set(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestTimer:
    """One generation's latencies: TTFT at the first token, then inter-token gaps; and its count
    of generated tokens, which the metrics report (finish)."""

    def __init__(self, metrics: ServerMetrics | None, model: str):
        self.metrics = metrics
        self.model = model
        self.start = self.last = time.perf_counter()
        self.tokens = 0

    def on_tokens(self, n: int, first_token_time: float | None = None) -> None:
        """An update with n new tokens. first_token_time (RequestOutput's, perf_counter): when the
        engine had the first token, which a non-streaming request's only update comes long after."""
        if n <= 0:
            return
        before, self.tokens = self.tokens, self.tokens + n
        if self.metrics is None:
            return
        now = time.perf_counter()
        since, gaps = self.last, n
        if before == 0:
            first = now if first_token_time is None else first_token_time
            self.metrics.ttft.labels(self.model).observe(first - self.start)
            since, gaps = first, n - 1  # the first token has no gap; the others share the rest
        for _ in range(gaps):  # several tokens in one update share the gap
            self.metrics.itl.labels(self.model).observe((now - since) / gaps)
        self.last = now

    def finish(self, prompt_tokens: int) -> None:
        """The request's end: its latency, its prompt tokens and the tokens on_tokens counted."""
        if self.metrics is None:
            return
        self.metrics.e2e.labels(self.model).observe(time.perf_counter() - self.start)
        self.metrics.prompt_tokens.labels(self.model).inc(prompt_tokens)
        self.metrics.generation_tokens.labels(self.model).inc(self.tokens)


class _LiveCollector:
    def __init__(self, models: Callable[[], Iterable]):
        self.models = models

    def describe(self):
        return []

    def collect(self):
        queue = GaugeMetricFamily("shardserve_queue_depth", "Admitted requests waiting to run", labels=["model"])
        running = GaugeMetricFamily("shardserve_running_requests", "Requests running in the engine", labels=["model"])
        kv = GaugeMetricFamily("shardserve_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", labels=["model"])
        ready = GaugeMetricFamily("shardserve_model_ready", "1 when every copy of the model is ready", labels=["model"])
        for model in self.models():
            stats = model.stats()
            queue.add_metric([model.name], stats["queue_depth"])
            running.add_metric([model.name], stats["running"])
            kv.add_metric([model.name], stats["kv_cache_usage"])
            ready.add_metric([model.name], 1.0 if model.ready else 0.0)
        yield from (queue, running, kv, ready)
