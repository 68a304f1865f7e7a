"""A small, bounded version of bench/load_test.py whose invariants are asserted.

20 concurrent streaming clients against one node with a short queue, then against a 2-node swarm
through a `--no-model` gateway: every request either completes with a finish_reason (and
`[DONE]`) or gets a 503 with Retry-After; nothing else, no silent truncation; the model nodes'
memory stays bounded, and they are idle and healthy afterwards.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llamanet.cli.launcher import wait_for_swarm

pytestmark = pytest.mark.model

CLIENTS = 20
REQUESTS = 2  # per client, one after the other
MAX_TOKENS = 8
RSS_GROWTH_LIMIT_MIB = 150  # generous: the model is mapped before; requests must not pile up


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "load_test.py"
    spec = importlib.util.spec_from_file_location("llamanet_load_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def assert_invariants(result: Any, entry: str) -> None:
    print()
    bench.print_table(entry, result)
    sent = len(result.outcomes)
    assert sent == CLIENTS * REQUESTS
    assert result.count(bench.TRUNCATED) == 0, result.details(bench.TRUNCATED)
    assert result.count(bench.FAILED) == 0, result.details(bench.FAILED)
    assert result.count(bench.COMPLETED) + result.count(bench.UNAVAILABLE) == sent
    assert result.count(bench.COMPLETED) > 0
    assert all(result.idle_after.values()), result.idle_after
    for name, (before, _peak, after) in result.rss_kb.items():
        assert after - before < RSS_GROWTH_LIMIT_MIB * 1024, (name, before, after)


def test_many_streams_against_one_node(start_node: Any) -> None:
    node = start_node("--model-id", "load", "--queue-size", "3")
    result = bench.run_scenario(
        node.url, {"node": node}, clients=CLIENTS, requests=REQUESTS, max_tokens=MAX_TOKENS
    )
    assert_invariants(result, "one node, queue 3")
    assert result.count(bench.UNAVAILABLE) > 0  # the load really exceeded the capacity
    status = node.status()
    assert status["requests_failed"] == 0
    assert status["requests_completed"] == result.count(bench.COMPLETED)
    assert status["requests_rejected"] == result.count(bench.UNAVAILABLE)


def test_many_streams_through_a_gateway_to_two_nodes(start_node: Any) -> None:
    a = start_node("--model-id", "load", "--queue-size", "2", "--n-threads", "1")
    b = start_node(
        "--model-id", "load", "--queue-size", "2", "--n-threads", "1", "--bootstrap", a.bootstrap
    )
    g = start_node("--no-model", "--bootstrap", a.bootstrap)
    wait_for_swarm([a, b, g])
    deadline = time.monotonic() + 30
    while sum(m["nodes"] for m in g.get("/v1/models").json()["data"]) < 2:
        assert time.monotonic() < deadline, "the gateway never saw both model nodes"
        time.sleep(0.2)
    result = bench.run_scenario(
        g.url,
        {"A": a, "B": b},
        clients=CLIENTS,
        requests=REQUESTS,
        max_tokens=MAX_TOKENS,
        model="load",
    )
    result.idle_after["G"] = bench.idle_and_healthy(g.url)
    assert_invariants(result, "2 nodes through a gateway, queue 2 each")
    completed = {n: node.status()["requests_completed"] for n, node in (("A", a), ("B", b))}
    assert completed["A"] > 0 and completed["B"] > 0  # both did work
    assert completed["A"] + completed["B"] == result.count(bench.COMPLETED)
