"""LlamaNetClient against REAL node processes on loopback, with the real default model.

Two nodes form the swarm for the whole module; the failure cases each start a node of their
own (joined to the same swarm) and break it. To make "the broken node is tried first"
deterministic, those tests give the client a `NodeSelector` that ranks that node first; every
other part of the path (discovery, HTTP, SSE, failover, cooldown) is the real one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any

import httpx
import pytest

from llamanet import LlamaNetClient, NodeRecord, NodeSelector
from llamanet.cli.launcher import NodeProcess, wait_for_swarm

pytestmark = pytest.mark.model

NODE_ARGS = ("--n-ctx", "512")
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # keeps a small model going until max_tokens
CHAT = [{"role": "user", "content": "Say hello."}]

StartNode = Callable[..., NodeProcess]


def node_id(node: NodeProcess) -> str:
    return str(node.get("/info").json()["node_id"])


@pytest.fixture(scope="module")
def seed(start_node: StartNode) -> NodeProcess:
    return start_node(*NODE_ARGS)


@pytest.fixture(scope="module")
def peer(start_node: StartNode, seed: NodeProcess) -> NodeProcess:
    node = start_node(*NODE_ARGS, "--bootstrap", seed.bootstrap)
    wait_for_swarm([seed, node])
    return node


class RankFirst(NodeSelector):
    """The real router, except that one node (the one a test breaks) always comes first.

    Its clock stands still, so a cooldown lasts until the test looks at it however slow the
    shared machine is.
    """

    def __init__(self, first: str) -> None:
        super().__init__(clock=lambda: 0.0)
        self.first = first

    def rank(self, records: Iterable[NodeRecord], **kwargs: Any) -> list[NodeRecord]:
        ranked = super().rank(records, **kwargs)
        return sorted(ranked, key=lambda r: r.node_id != self.first)


async def wait_for_nodes(client: LlamaNetClient, wanted: Collection[str]) -> None:
    """Refreshes discovery until the client knows every node in `wanted`, each serving a model
    (a record published while its model was still loading lists none)."""
    for _ in range(300):
        if set(wanted) <= {n.node_id for n in await client.nodes() if n.models}:
            return
        await client.refresh()
        await asyncio.sleep(0.1)
    raise AssertionError(f"the client never discovered {wanted}")


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def completed(node: NodeProcess) -> int:
    status = await asyncio.to_thread(node.status)
    return int(status["requests_completed"])


# --------------------------------------------------------------------------- discovery


async def test_discovery_through_a_node_url(seed: NodeProcess, peer: NodeProcess) -> None:
    ids = {node_id(seed), node_id(peer)}
    async with LlamaNetClient(nodes=[seed.url], refresh_interval=1.0) as client:
        await wait_for_nodes(client, ids)
        models = await client.models()
        assert len(models) == 1 and models[0].nodes == 2 and models[0].n_ctx == 512
        result = await client.generate("The capital of France is", max_tokens=8, temperature=0)
    assert result.node_id in ids
    assert result.text and 0 < result.tokens_generated <= 8


async def test_discovery_through_dht_bootstrap(seed: NodeProcess, peer: NodeProcess) -> None:
    ids = {node_id(seed), node_id(peer)}
    async with LlamaNetClient(bootstrap=[peer.bootstrap], refresh_interval=1.0) as client:
        await wait_for_nodes(client, ids)
        chunks = await collect(client.chat_stream(CHAT, max_tokens=8, temperature=0))
    assert chunks[-1].finished and chunks[-1].usage is not None
    assert "".join(c.text for c in chunks)
    assert {c.node_id for c in chunks} <= ids


def test_sync_facade(seed: NodeProcess, peer: NodeProcess) -> None:
    with LlamaNetClient.sync(nodes=[peer.url]) as client:
        reply = client.chat(CHAT, max_tokens=8, temperature=0)
        streamed = "".join(c.text for c in client.generate_stream(COUNTING, max_tokens=8))
    assert reply.text and reply.usage.completion_tokens <= 8
    assert streamed


# --------------------------------------------------------------------------- load spreading


async def test_concurrent_streams_use_both_nodes(seed: NodeProcess, peer: NodeProcess) -> None:
    nodes = {node_id(seed): seed, node_id(peer): peer}
    before = {nid: await completed(n) for nid, n in nodes.items()}
    async with LlamaNetClient(nodes=[seed.url], refresh_interval=1.0) as client:
        await wait_for_nodes(client, nodes)
        prompts = [f"{COUNTING} {9 + i}," for i in range(6)]
        results = await asyncio.gather(
            *(collect(client.generate_stream(p, max_tokens=16, temperature=0)) for p in prompts)
        )
    served = Counter(chunks[-1].node_id for chunks in results)
    assert all(chunks[-1].finished for chunks in results)
    assert set(served) == set(nodes), f"one node served everything: {served}"
    # the nodes' own counters agree with what the client saw
    for nid, node in nodes.items():
        want = before[nid] + served[nid]
        await asyncio.to_thread(node.wait_until, lambda s, w=want: s["requests_completed"] >= w)
        assert await completed(node) == want


# --------------------------------------------------------------------------- failures


async def test_busy_node_503_fails_over(start_node: StartNode, seed: NodeProcess) -> None:
    busy = start_node(
        *NODE_ARGS,
        "--parallel",
        "1",
        "--queue-size",
        "0",
        "--no-forward",
        "--bootstrap",
        seed.bootstrap,
    )
    busy_id = node_id(busy)
    occupy = {"prompt": COUNTING, "max_tokens": 256, "temperature": 0}
    async with (
        httpx.AsyncClient(timeout=30) as raw,
        LlamaNetClient(nodes=[seed.url], selector=RankFirst(busy_id)) as client,
    ):
        await wait_for_nodes(client, {busy_id, node_id(seed)})
        async with raw.stream("POST", f"{busy.url}/generate/stream", json=occupy) as held:
            assert held.status_code == 200  # the busy node's only slot is taken now
            await asyncio.to_thread(busy.wait_until, lambda s: s["active"] + s["queued"] >= 1)
            result = await client.generate("Hello", max_tokens=8)
            rejected = (await asyncio.to_thread(busy.status))["requests_rejected"]
        assert result.node_id != busy_id
        assert rejected >= 1  # the client really was turned away with a 503 first
        assert not client.selector.in_cooldown(busy_id)  # busy is not broken: no cooldown
    await asyncio.to_thread(busy.stop)  # a clean leave (withdrawn from the DHT)


async def test_dead_node_fails_over_and_cools_down(
    start_node: StartNode, seed: NodeProcess, peer: NodeProcess
) -> None:
    victim = start_node(*NODE_ARGS, "--bootstrap", seed.bootstrap)
    victim_id = node_id(victim)
    async with LlamaNetClient(nodes=[seed.url], selector=RankFirst(victim_id)) as client:
        await wait_for_nodes(client, {victim_id, node_id(seed)})
        await asyncio.to_thread(victim.kill)
        result = await client.generate("Hello", max_tokens=8)
        assert result.node_id != victim_id
        assert client.selector.in_cooldown(victim_id)
        again = await client.generate("Hello", max_tokens=8)  # no second try on the dead node
        assert again.node_id != victim_id


async def test_stream_broken_midway_resumes_on_another_node(
    start_node: StartNode, seed: NodeProcess
) -> None:
    """The node serving a stream is frozen and killed after its first chunk: the client resumes
    the same answer on the seed (same model file) and the caller gets one whole answer (the
    case where nothing can take over, StreamInterrupted, is in tests/test_resume.py)."""
    victim = start_node(*NODE_ARGS, "--bootstrap", seed.bootstrap, env={"LLAMANET_N_THREADS": "1"})
    victim_id = node_id(victim)
    received: list[Any] = []
    async with LlamaNetClient(
        nodes=[seed.url], selector=RankFirst(victim_id), stall_timeout=5.0
    ) as client:
        await wait_for_nodes(client, {victim_id, node_id(seed)})
        async for chunk in client.generate_stream(COUNTING, max_tokens=48, temperature=0):
            received.append(chunk)
            if len(received) == 1:  # freeze, then kill the node serving this stream
                os.kill(victim.proc.pid, signal.SIGSTOP)
                victim.proc.kill()
    await asyncio.to_thread(victim.proc.wait, 10)
    assert received[-1].finished and received[-1].finish_reason in ("stop", "length")
    assert sum(1 for c in received if c.finished) == 1
    assert received[-1].usage is not None
