"""Faults with real node processes on loopback: a frozen node (SIGSTOP) is detected and cooled
down by the gateway and by `LlamaNetClient`; a relayed stream whose node dies mid-way ends with
the promised error event and counts as a 502.

Three nodes for the module: G (`--no-model`, the gateway, first-byte deadline 1 s), A and B
(both serve `alpha`). A has a 10 s heartbeat, so its record outlives a freeze by half a minute:
the window in which everyone still believes it alive.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llamanet import LlamaNetClient
from llamanet.cli.launcher import NodeProcess

pytestmark = pytest.mark.model

StartNode = Callable[..., NodeProcess]
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Count from one to fifty."}]
FIRST_BYTE = "1"


def node_id(node: NodeProcess) -> str:
    return str(node.get("/info").json()["node_id"])


def wait_for_models(node: NodeProcess, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        data = {m["id"]: m for m in node.get("/v1/models").json()["data"]}
        if data.get("alpha", {}).get("nodes") == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.url} never saw {count} nodes of alpha: {data}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swarm(start_node: StartNode) -> dict[str, NodeProcess]:
    g = start_node("--no-model", "--first-byte-timeout", FIRST_BYTE)
    a = start_node("--model-id", "alpha", "--heartbeat", "10", "--bootstrap", g.bootstrap)
    b = start_node("--model-id", "alpha", "--bootstrap", g.bootstrap)
    wait_for_models(g, 2)
    wait_for_models(b, 2)
    return {"g": g, "a": a, "b": b}


@pytest.fixture
def frozen(swarm: dict[str, NodeProcess]) -> Iterator[NodeProcess]:
    """Node A, stopped (SIGSTOP) for the test: its sockets accept, nothing answers."""
    a = swarm["a"]
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        yield a
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)


def cooldowns(gateway: NodeProcess, peer: str) -> int:
    """How many times the gateway logged cooling `peer` down."""
    return len(re.findall(rf"(?i)peer (?:node )?{peer[:12]}\b.*cooling down", gateway.log()))


def test_a_frozen_node_is_cooled_down_by_the_gateway(
    swarm: dict[str, NodeProcess], frozen: NodeProcess
) -> None:
    """No request may wait on the frozen node past the first-byte deadline plus one probe;
    once it has been tried it is cooled down (issue 13: it was chosen until its record
    expired, and every request to it hung)."""
    g, frozen_id, b_id = swarm["g"], node_id_of(frozen), node_id(swarm["b"])
    sdk = openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0, timeout=20)
    served: list[str] = []
    for attempt in range(24):  # the frozen node is chosen at random among two: until it was
        if attempt % 2:
            streamed = sdk.chat.completions.with_raw_response.create(
                model="alpha", messages=CHAT, max_tokens=4, temperature=0, stream=True
            )
            served.append(streamed.headers["x-llamanet-node"])
            assert list(streamed.parse())[-1].choices[0].finish_reason in ("stop", "length")
        else:
            whole = sdk.chat.completions.with_raw_response.create(
                model="alpha", messages=CHAT, max_tokens=4, temperature=0
            )
            served.append(whole.headers["x-llamanet-node"])
            assert whole.parse().choices[0].message.content is not None
        if cooldowns(g, frozen_id):
            break
    assert cooldowns(g, frozen_id) == 1, "the frozen node was never tried"
    assert set(served) == {b_id}
    # cooling down: the next requests go straight to B, without another try of A
    for _ in range(3):
        reply = sdk.chat.completions.with_raw_response.create(
            model="alpha", messages=CHAT, max_tokens=4, temperature=0
        )
        assert reply.headers["x-llamanet-node"] == b_id
    assert cooldowns(g, frozen_id) == 1


def test_the_client_never_prefers_a_node_that_fails_its_probe(
    swarm: dict[str, NodeProcess], frozen: NodeProcess
) -> None:
    """A failed /health probe counted as rtt 0 made the client prefer the frozen node and wait
    120 s on it; now the probe cools it down and the first-byte deadline is short."""
    b = swarm["b"]
    frozen_id, b_id = node_id_of(frozen), node_id(b)

    async def run() -> list[str]:
        async with LlamaNetClient(nodes=[b.url], first_byte_timeout=1.0) as client:
            assert frozen_id in {n.node_id for n in await client.nodes()}
            served = []
            for _ in range(4):
                result = await asyncio.wait_for(
                    client.generate("Hello", max_tokens=4, temperature=0), timeout=30
                )
                served.append(result.node_id)
            assert client.selector.in_cooldown(frozen_id)
            return served

    assert set(asyncio.run(run())) == {b_id}


def test_a_relayed_stream_broken_midway_ends_with_an_error_event(
    swarm: dict[str, NodeProcess],
) -> None:
    """Kill -9 the node serving a stream through the gateway while the other node is frozen
    (so no node can resume it, see test_resume.py): the openai SDK gets the error event (not a
    raw protocol error), the gateway counts a 502 and logs no traceback."""
    g = swarm["g"]
    others: list[NodeProcess] = []
    before = _count_502(g)
    sdk = openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0, timeout=60)
    raw = sdk.chat.completions.with_raw_response.create(
        model="alpha", messages=CHAT, max_tokens=400, temperature=0, stream=True
    )
    serving_id = raw.headers["x-llamanet-node"]
    serving = next(n for n in (swarm["a"], swarm["b"]) if node_id_of(n) == serving_id)
    received = 0
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == 5:
                    others = [n for n in (swarm["a"], swarm["b"]) if n is not serving]
                    for other in others:
                        os.kill(other.proc.pid, signal.SIGSTOP)
                    serving.proc.kill()
    for other in others:
        os.kill(other.proc.pid, signal.SIGCONT)
    assert received >= 5
    assert "failed" in str(info.value.message)
    assert not isinstance(info.value, openai.APIConnectionError)
    deadline = time.monotonic() + 10
    while _count_502(g) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count_502(g) == before + 1
    text = g.log()
    assert "Traceback" not in text
    assert re.search(r"POST /v1/chat/completions .*status=502", text)


_ids: dict[int, str] = {}


def node_id_of(node: NodeProcess) -> str:
    """The node id, remembered from before the node was frozen or killed."""
    if node.proc.pid not in _ids:
        _ids[node.proc.pid] = node_id(node)
    return _ids[node.proc.pid]


@pytest.fixture(scope="module", autouse=True)
def _remember_ids(swarm: dict[str, NodeProcess]) -> None:
    for node in swarm.values():
        node_id_of(node)


def _count_502(node: NodeProcess) -> float:
    text = node.get("/metrics").text
    pattern = r'llamanet_http_requests_total\{endpoint="/v1/chat/completions",status="502"\} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0
