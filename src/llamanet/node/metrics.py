"""Prometheus metrics of one node (`GET /metrics`).

Request counts and latency histograms are observed as requests end; everything the node already
counts (tokens, queue depth, active requests, forwarded requests, DHT peers) is read at scrape
time by a collector, so the token loop pays nothing for metrics. The collector is handed two
callables (the node's status and its DHT status), not the node itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamanet.protocol import NodeStatus

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _NodeCollector(Collector):
    def __init__(
        self, status: Callable[[], NodeStatus], dht_status: Callable[[], dict[str, Any]]
    ) -> None:
        self.status = status
        self.dht_status = dht_status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        yield CounterMetricFamily(
            "llamanet_tokens_generated", "Completion tokens generated.", value=s.tokens_generated
        )
        yield CounterMetricFamily(
            "llamanet_requests_forwarded",
            "Requests this node forwarded to a peer.",
            value=s.requests_forwarded,
        )
        outcomes = CounterMetricFamily(
            "llamanet_generations", "Generations by outcome.", labels=["outcome"]
        )
        for outcome, value in (
            ("completed", s.requests_completed),
            ("cancelled", s.requests_cancelled),
            ("failed", s.requests_failed),
            ("rejected", s.requests_rejected),
        ):
            outcomes.add_metric([outcome], value)
        yield outcomes
        yield GaugeMetricFamily("llamanet_queue_depth", "Requests waiting.", value=s.queued)
        yield GaugeMetricFamily("llamanet_active_requests", "Requests generating.", value=s.active)
        yield GaugeMetricFamily(
            "llamanet_tokens_per_second",
            "Moving average of decode speed.",
            value=s.tokens_per_second,
        )
        yield GaugeMetricFamily(
            "llamanet_aggregate_tokens_per_second",
            "Decode speed of every stream together, while generating.",
            value=s.aggregate_tokens_per_second,
        )
        yield GaugeMetricFamily("llamanet_slots", "Sequences batched together.", value=s.slots)
        yield GaugeMetricFamily(
            "llamanet_slots_busy", "Slots holding a request.", value=s.slots_busy
        )
        yield GaugeMetricFamily(
            "llamanet_batch_tokens", "Tokens in the last decode batch.", value=s.batch_tokens
        )
        prompt = CounterMetricFamily(
            "llamanet_prompt_tokens", "Prompt tokens by how they were served.", labels=["source"]
        )
        prompt.add_metric(["evaluated"], s.prompt_tokens_evaluated)
        prompt.add_metric(["reused"], s.prompt_tokens_reused)
        yield prompt
        yield CounterMetricFamily(
            "llamanet_prefix_cache_hits",
            "Requests that found part of their prompt already evaluated.",
            value=s.prefix_cache_hits,
        )
        yield CounterMetricFamily(
            "llamanet_decode_steps",
            "llama_decode calls of the batching loop.",
            value=s.decode_steps,
        )
        yield CounterMetricFamily(
            "llamanet_slot_moves",
            "Sequences moved to close a gap between busy slots (one graph fewer per step).",
            value=s.slot_moves,
        )
        peers = int(self.dht_status().get("routing_table_size", 0))
        yield GaugeMetricFamily(
            "llamanet_dht_peers", "Peers in the DHT routing table.", value=peers
        )


class Metrics:
    """One registry per node (not the global default), so several apps can live in a process.

    `status` and `dht_status` are read at scrape time (`dht_status()["routing_table_size"]`, 0
    when absent: a node without a DHT).
    """

    def __init__(
        self,
        *,
        status: Callable[[], NodeStatus],
        dht_status: Callable[[], dict[str, Any]],
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llamanet_http_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "llamanet_request_duration_seconds",
            "Time from request to the end of the response.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llamanet_time_to_first_token_seconds",
            "Prompt processing time until the first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(status, dht_status))

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
