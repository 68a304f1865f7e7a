"""Discovery across real node processes on loopback: joining, leaving, dying, restarting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from llamanet.swarm.dht import DHTNode

pytestmark = pytest.mark.model


def ids(node: Any, model: str | None = None) -> set[str]:
    params = {"model": model} if model else {}
    return {r["node_id"] for r in node.get("/nodes", params=params).json()["nodes"]}


def node_id(node: Any) -> str:
    return node.get("/info").json()["node_id"]


def eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swarm(start_node: Any) -> list[Any]:
    """A alone; B bootstraps from A; C from B. C serves the same file under another id."""
    a = start_node("--model-id", "alpha")
    b = start_node("--model-id", "alpha", "--bootstrap", a.bootstrap)
    c = start_node("--model-id", "gamma", "--bootstrap", b.bootstrap)
    return [a, b, c]


def test_each_node_finds_all_three(swarm: list[Any]) -> None:
    want = {node_id(n) for n in swarm}
    for node in swarm:
        eventually(lambda node=node: ids(node) == want)


def test_lookup_filters_by_model(swarm: list[Any]) -> None:
    a, b, c = swarm
    eventually(lambda: ids(c, "alpha") == {node_id(a), node_id(b)})
    assert ids(a, "gamma") == {node_id(c)}


def test_light_client_bootstrapping_from_c_finds_all(swarm: list[Any]) -> None:
    want = {node_id(n) for n in swarm}

    async def look() -> tuple[set[str], set[str]]:
        dht = DHTNode(identity=None)
        await dht.start("127.0.0.1", 0)
        try:
            await dht.bootstrap([("127.0.0.1", swarm[2].dht_port)])
            every = {r.node_id for r in await dht.find_nodes()}
            alpha = {r.node_id for r in await dht.find_nodes("alpha")}
            return every, alpha
        finally:
            await dht.stop()

    every, alpha = asyncio.run(look())
    assert every == want
    assert alpha == {node_id(swarm[0]), node_id(swarm[1])}


def test_dht_status_reports_peers_and_keys(swarm: list[Any]) -> None:
    status = swarm[1].get("/dht/status").json()
    assert status["node_id"] == node_id(swarm[1])
    assert status["routing_table_size"] >= 2
    assert status["keys_published"] >= 3  # model:alpha, all_nodes shard, node:<id>
    assert status["last_heartbeat"] is not None


def test_clean_stop_disappears_at_once_and_kill_after_ttl(
    start_node: Any, swarm: list[Any]
) -> None:
    a = swarm[0]
    leaving = start_node("--model-id", "alpha", "--bootstrap", a.bootstrap, "--heartbeat", "10")
    dying = start_node("--model-id", "alpha", "--bootstrap", a.bootstrap, "--heartbeat", "1")
    leaving_id, dying_id = node_id(leaving), node_id(dying)
    eventually(lambda: {leaving_id, dying_id} <= ids(a))
    # clean stop: the tombstone removes it at once, long before its 30 s ttl could run out
    assert leaving.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert "withdrew node" in leaving.log()
    t0 = time.monotonic()
    eventually(lambda: leaving_id not in ids(a), timeout=8)
    assert time.monotonic() - t0 < 10  # ttl is 3 x 10 s: only the tombstone explains this
    # SIGKILL: no goodbye; gone once its entries expire (3 heartbeats of 1 s)
    dying.kill()
    assert dying_id in ids(a)  # still listed right after the kill: nobody withdrew it
    eventually(lambda: dying_id not in ids(a), timeout=20)


def test_restarted_node_keeps_its_id(start_node: Any, swarm: list[Any]) -> None:
    first = start_node("--model-id", "alpha", "--bootstrap", swarm[0].bootstrap)
    home, before = first.home, node_id(first)
    first.stop()
    again = start_node("--model-id", "alpha", "--bootstrap", swarm[0].bootstrap, home=home)
    assert node_id(again) == before
    eventually(lambda: before in ids(swarm[0]))
