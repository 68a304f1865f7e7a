"""Clients that vanish, through a gateway: the serving node stops the generation, frees its
slot, and nothing is left behind (what tests/test_node_queue.py checks on a direct connection).

"Nothing left behind" is read from the node's counters: every admitted request ends as
completed, cancelled or failed (so none is orphaned), the node goes back to active 0 / queued 0,
and the processes' open file descriptors (sockets) return to their baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.model

LONG = 1500  # far more tokens than any test waits for: finishing them would be the bug
STORY = [{"role": "user", "content": "Tell me a very long story about a cat."}]


def body(max_tokens: int = LONG, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "smol",
        "messages": STORY,
        "max_tokens": max_tokens,
        "stream": stream,
        "temperature": 0.8,
        # no end of generation (<|endoftext|> 0, <|im_end|> 2): a story that ended early made
        # "the client gave up while B generated" untrue (a fresh-clone run answered within 1 s)
        "logit_bias": {"0": -100, "2": -100},
    }


@pytest.fixture(scope="module")
def swarm(start_node: Any) -> dict[str, Any]:
    """B serves the model (one slot, a queue of 1); G holds none and forwards to B."""
    b = start_node("--model-id", "smol", "--parallel", "1", "--queue-size", "1")
    g = start_node("--no-model", "--bootstrap", b.bootstrap)
    deadline = time.monotonic() + 30
    while "smol" not in {m["id"] for m in g.get("/v1/models").json()["data"]}:
        assert time.monotonic() < deadline, "G never learned that B serves smol"
        time.sleep(0.2)
    return {"b": b, "g": g}


def idle(status: dict[str, Any]) -> bool:
    return status["active"] == 0 and status["queued"] == 0


def accounted(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Every request admitted since `before` has ended one way or another: no orphan."""

    def delta(key: str) -> int:
        return after[key] - before[key]

    return delta("requests_total") == (
        delta("requests_completed") + delta("requests_cancelled") + delta("requests_failed")
    )


def open_fds(node: Any) -> int:
    return len(os.listdir(f"/proc/{node.proc.pid}/fd"))


def settle_fds(node: Any, baseline: int, slack: int = 2, timeout: float = 30.0) -> int:
    """Waits (bounded) for the node's descriptors to come back near `baseline` (keep-alive
    connections close within uvicorn's 5 s)."""
    deadline = time.monotonic() + timeout
    while open_fds(node) > baseline + slack and time.monotonic() < deadline:
        time.sleep(0.2)
    return open_fds(node)


@contextlib.contextmanager
def open_stream(url: str, payload: dict[str, Any]) -> Iterator[Iterator[str]]:
    """A streaming request held open until the block ends (then the client disconnects)."""
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", url + "/v1/chat/completions", json=payload) as res,
    ):
        assert res.status_code == 200, res.read()
        yield res.iter_lines()


def test_vanishing_mid_stream_at_the_gateway_stops_the_serving_node(swarm: dict[str, Any]) -> None:
    b, g = swarm["b"], swarm["g"]
    b.wait_until(idle)
    before, fds_b, fds_g = b.status(), open_fds(b), open_fds(g)
    with open_stream(g.url, body()) as lines:
        received = [next(lines) for _ in range(6)]  # a few events, then the client leaves
    assert any(line.startswith("data: {") for line in received)
    after = b.wait_until(
        lambda s: idle(s) and s["requests_cancelled"] > before["requests_cancelled"]
    )
    assert after["tokens_generated"] - before["tokens_generated"] < LONG
    assert after["requests_completed"] == before["requests_completed"]
    assert accounted(before, after)
    assert settle_fds(b, fds_b) <= fds_b + 2 and settle_fds(g, fds_g) <= fds_g + 2


def test_vanishing_mid_non_stream_at_the_gateway_stops_the_serving_node(
    swarm: dict[str, Any],
) -> None:
    b, g = swarm["b"], swarm["g"]
    b.wait_until(idle)
    before = b.status()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while B generates
        httpx.post(
            g.url + "/v1/chat/completions",
            json=body(stream=False),
            timeout=httpx.Timeout(30, read=1.0),
        )
    after = b.wait_until(
        lambda s: idle(s) and s["requests_cancelled"] > before["requests_cancelled"]
    )
    assert after["tokens_generated"] - before["tokens_generated"] < LONG
    assert accounted(before, after)


def test_vanishing_while_queued_at_the_peer_frees_the_slot(swarm: dict[str, Any]) -> None:
    b, g = swarm["b"], swarm["g"]
    b.wait_until(idle)
    before = b.status()
    with open_stream(g.url, body()) as first:
        next(first)
        b.wait_until(lambda s: s["active"] == 1)
        with open_stream(g.url, body()):  # admitted at B behind the first one
            b.wait_until(lambda s: s["queued"] == 1)
        b.wait_until(lambda s: s["queued"] == 0)  # it left: its slot is free again
        with open_stream(g.url, body(max_tokens=4)) as third:  # so this one is admitted
            b.wait_until(lambda s: s["queued"] == 1)
            next(third)
    after = b.wait_until(idle)
    assert after["requests_rejected"] == before["requests_rejected"]
    assert after["requests_cancelled"] - before["requests_cancelled"] >= 2
    assert accounted(before, after)


def test_many_clients_vanishing_at_random_points_leave_nothing_behind(
    swarm: dict[str, Any],
) -> None:
    """24 clients, direct and through the gateway, each leaving at a random point: before the
    answer starts, after some events, or reading to the end. Afterwards the node is idle, every
    admitted request is accounted for, and no connection was leaked on either process."""
    b, g = swarm["b"], swarm["g"]
    b.wait_until(idle)
    before, fds_b, fds_g = b.status(), open_fds(b), open_fds(g)
    rng = random.Random(7)
    plans = [
        (rng.choice([b.url, g.url]), rng.choice(["head", "events", "end"]), rng.randint(1, 8))
        for _ in range(24)
    ]

    async def client(url: str, leave: str, events: int) -> str:
        payload = body(max_tokens=12 if leave == "end" else LONG)
        async with httpx.AsyncClient(timeout=60) as http:
            if leave == "head":  # gone before the answer starts
                with contextlib.suppress(httpx.TimeoutException):
                    await http.post(
                        url + "/v1/chat/completions",
                        json=payload,
                        timeout=httpx.Timeout(30, read=0.05),
                    )
                return "left"
            async with http.stream("POST", url + "/v1/chat/completions", json=payload) as res:
                if res.status_code != 200:
                    await res.aread()
                    return f"status {res.status_code}"
                seen = 0
                async for line in res.aiter_lines():
                    if line.startswith("data: "):
                        seen += 1
                    if leave == "events" and seen >= events:
                        return "left"
                return "done"

    outcomes = asyncio.run(_gather(client(*plan) for plan in plans))
    assert all(o in ("left", "done", "status 503") for o in outcomes), outcomes
    after = b.wait_until(idle, timeout=60)
    assert accounted(before, after), (before, after)
    assert after["requests_failed"] == before["requests_failed"]
    assert b.get("/health").status_code == 200 and g.get("/health").status_code == 200
    assert settle_fds(b, fds_b) <= fds_b + 2
    assert settle_fds(g, fds_g) <= fds_g + 2


async def _gather(coros: Any) -> list[str]:
    return list(await asyncio.gather(*coros))
