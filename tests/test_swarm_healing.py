"""The swarm heals, with real node processes on loopback: a clean leave is seen everywhere at
once, and a restarted node (even the first one, started without --bootstrap) finds its way back.
At most three nodes run at a time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llamanet.cli.launcher import NodeProcess, wait_for_swarm

pytestmark = pytest.mark.model

StartNode = Callable[..., NodeProcess]
CHAT = [{"role": "user", "content": "Say hello."}]


def node_id(node: NodeProcess) -> str:
    return str(node.get("/info").json()["node_id"])


def ids(node: NodeProcess) -> set[str]:
    return {r["node_id"] for r in node.get("/nodes").json()["nodes"]}


def models(node: NodeProcess) -> set[str]:
    return {m["id"] for m in node.get("/v1/models").json()["data"]}


def contacts(node: NodeProcess) -> list[str]:
    return list(node.get("/dht/status").json()["peers"])


def chat(node: NodeProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": CHAT, "max_tokens": 4, "temperature": 0}
    return httpx.post(node.url + "/v1/chat/completions", json=body, timeout=60)


def eventually(check: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    """Seconds until `check()` held; raises after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not reached")
        time.sleep(every)
    return time.monotonic() - started


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_clean_leave_is_seen_by_every_peer_within_a_second(start_node: StartNode) -> None:
    """With a heartbeat of 10 s the peers' caches refresh every 5 s; the tombstone the leaving
    node hands them must drop it at once (issue 10), from `/nodes`, `/v1/models` and routing."""
    slow = ("--heartbeat", "10")
    a = start_node("--model-id", "alpha", *slow)
    b = start_node("--model-id", "alpha", *slow, "--bootstrap", a.bootstrap)
    c = start_node("--model-id", "gamma", *slow, "--bootstrap", a.bootstrap)
    try:
        leaving = node_id(c)
        eventually(lambda: all(leaving in ids(n) and "gamma" in models(n) for n in (a, b)), 40)
        assert chat(a, "gamma").headers["x-llamanet-node"] == leaving

        assert c.stop() in (0, -15)
        seconds = eventually(lambda: all(leaving not in ids(n) for n in (a, b)), timeout=10)
        assert seconds < 1.0, f"still listed {seconds:.1f} s after it left"
        assert all("gamma" not in models(n) for n in (a, b))
        # nobody left serves gamma: a temporary outage (503 + Retry-After), not an unknown model
        res = chat(b, "gamma")
        assert res.status_code == 503, res.text
        assert int(res.headers["retry-after"]) >= 1
    finally:
        for node in (a, b, c):
            node.stop()


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_the_first_node_restarted_rejoins_and_serves(
    start_node: StartNode, tmp_path_factory: pytest.TempPathFactory, how: str
) -> None:
    """A (no --bootstrap) is restarted with the same home and ports after its peers dropped
    it; it must rejoin through the peers it remembered and serve through the swarm (issue 13)."""
    home = tmp_path_factory.mktemp("first-node")
    ports = ["--port", str(free_port(socket.SOCK_STREAM))]
    ports += ["--dht-port", str(free_port(socket.SOCK_DGRAM))]
    a = start_node("--model-id", "alpha", *ports, home=home)
    b = start_node("--model-id", "beta", "--bootstrap", a.bootstrap)
    c = start_node("--model-id", "gamma", "--bootstrap", b.bootstrap)
    nodes: list[Any] = [a, b, c]
    try:
        wait_for_swarm([a, b, c])
        first, others = node_id(a), {node_id(b), node_id(c)}
        a.kill() if how == "kill" else a.stop()
        gone = f"127.0.0.1:{a.dht_port}"
        # the others drop it: from their lists, and from their routing tables (calls time out)
        eventually(lambda: all(first not in ids(n) and gone not in contacts(n) for n in (b, c)), 30)

        again = start_node("--model-id", "alpha", *ports, home=home)
        nodes.append(again)
        assert node_id(again) == first
        rejoined = eventually(
            lambda: ids(again) >= others and all(first in ids(n) for n in (b, c)),
            timeout=15,
        )
        assert rejoined < 10.0
        served = chat(again, "gamma")  # forwarded by the restarted node
        assert served.status_code == 200 and served.headers["x-llamanet-node"] == node_id(c)
        back = chat(c, "alpha")  # and the swarm routes to it again
        assert back.status_code == 200 and back.headers["x-llamanet-node"] == first
    finally:
        for node in nodes:
            node.stop()
