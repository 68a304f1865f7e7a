"""LlamaNetClient unit tests against a FAKE transport (`httpx.MockTransport`), not real nodes.

These pin down failover order, cooldowns, error classification and SSE handling with scripted
node behaviour; `test_client_swarm.py` runs the same client against real node processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from llamanet.client import (
    LlamaNetClient,
    NodeError,
    NoNodeAvailable,
    RecordCache,
    StreamInterrupted,
    estimate_prompt_tokens,
)
from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import sign_record
from llamanet.swarm.selector import NodeSelector

MODEL = "tiny"
Behaviour = Callable[[httpx.Request], httpx.Response]


_IDENTITIES: dict[str, NodeIdentity] = {}


def identity(name: str) -> NodeIdentity:
    if name not in _IDENTITIES:
        _IDENTITIES[name] = NodeIdentity.generate()
    return _IDENTITIES[name]


def nid(name: str) -> str:
    """The node id of fake node `name` (reached at http://<name>.test)."""
    return identity(name).node_id


def record(
    name: str,
    *,
    seq: int = 1,
    n_ctx: int = 2048,
    model: str = MODEL,
    withdrawn: bool = False,
    ttl: float = 30.0,
    issued_at: float | None = None,
    active: int = 0,
    url: str | None = None,
    fingerprint: str | None = None,
) -> NodeRecord:
    """A properly signed record of fake node `name`."""
    return sign_record(
        identity(name),
        url=url or f"http://{name}.test",
        models=[ModelInfo(id=model, n_ctx=n_ctx, fingerprint=fingerprint)],
        active=active,
        tokens_per_second=10.0,
        version="test",
        started_at=0.0,
        seq=seq,
        issued_at=time.time() if issued_at is None else issued_at,
        ttl=ttl,
        withdrawn=withdrawn,
    )


def bump(rec: NodeRecord, **update: Any) -> NodeRecord:
    """A newer signed version of `rec` with some fields changed."""
    name = next(n for n, i in _IDENTITIES.items() if i.node_id == rec.node_id)
    fields = rec.model_dump(exclude={"signature", "node_id", "public_key", "issued_at"})
    fields.update(seq=rec.seq + 1, **update)
    return sign_record(identity(name), **fields)


def sse_body(*events: Any, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def chunk(name: str, index: int, text: str, *, finished: bool = False) -> dict[str, Any]:
    return {
        "text": text,
        "index": index,
        "finished": finished,
        "finish_reason": "stop" if finished else None,
        "node_id": nid(name),
    }


def finished_chunk(name: str, index: int) -> dict[str, Any]:
    usage = {"prompt_tokens": 3, "completion_tokens": index, "total_tokens": 3 + index}
    return {**chunk(name, index, "", finished=True), "usage": usage}


def generate_json(name: str, text: str = "hello") -> dict[str, Any]:
    return {
        "text": text,
        "tokens_generated": 2,
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "node_id": nid(name),
        "model": MODEL,
        "tokens_per_second": 10.0,
        "ttft_ms": 5.0,
        "generation_time": 0.2,
    }


def error_json(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class BrokenStream(httpx.AsyncByteStream):
    """A response body that delivers `head` and then loses the connection."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx.ReadError("connection reset by peer")


class FakeSwarm:
    """Scripted nodes behind one MockTransport; records every request each node receives."""

    def __init__(self, *records: NodeRecord) -> None:
        self.records = list(records)
        self.behaviour: dict[str, Behaviour] = {}
        self.calls: list[tuple[str, str]] = []  # (host name, path)
        self.requests: list[httpx.Request] = []

    def name_of(self, request: httpx.Request) -> str:
        return request.url.host.removesuffix(".test")

    def on(self, name: str, behaviour: Behaviour) -> None:
        self.behaviour[name] = behaviour

    def handler(self, request: httpx.Request) -> httpx.Response:
        name = self.name_of(request)
        headers = {"X-LlamaNet-Node": nid(name)}
        if request.url.path == "/nodes":
            body = {"nodes": [r.model_dump() for r in self.records]}
            return httpx.Response(200, json=body, headers=headers)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"}, headers=headers)
        self.calls.append((name, request.url.path))
        self.requests.append(request)
        behaviour = self.behaviour.get(name, ok)
        response = behaviour(request)
        response.headers.update(headers)
        return response

    def served(self, path: str | None = None) -> list[str]:
        return [name for name, p in self.calls if path is None or p == path]


def ok(request: httpx.Request) -> httpx.Response:
    name = request.url.host.removesuffix(".test")
    if request.url.path == "/generate/stream":
        events = [chunk(name, 0, "Hel"), chunk(name, 1, "lo"), finished_chunk(name, 2)]
        return httpx.Response(
            200, content=sse_body(*events), headers={"content-type": "text/event-stream"}
        )
    return httpx.Response(200, json=generate_json(name))


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def status(
    code: int,
    type_: str = "server_error",
    err_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Behaviour:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, json=error_json("nope", type_, err_code), headers=headers)

    return respond


def stream_of(body: bytes | httpx.AsyncByteStream) -> Behaviour:
    def respond(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        if isinstance(body, bytes):
            return httpx.Response(200, content=body, headers=headers)
        return httpx.Response(200, stream=body, headers=headers)

    return respond


def client_for(swarm: FakeSwarm, **kwargs: Any) -> LlamaNetClient:
    kwargs.setdefault("nodes", ["http://a.test"])
    kwargs.setdefault("refresh_interval", 3600.0)
    return LlamaNetClient(transport=httpx.MockTransport(swarm.handler), **kwargs)


def first_choice(client: LlamaNetClient, swarm: FakeSwarm, name: str) -> None:
    """Make `name` the best node for the next request (the others look busier)."""
    swarm.records = [r if r.node_id == nid(name) else bump(r, active=5) for r in swarm.records]
    client.records.merge(swarm.records)


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


# --------------------------------------------------------------------------- discovery


async def test_discovers_nodes_through_a_node_url() -> None:
    swarm = FakeSwarm(record("a"), record("b", model="other", n_ctx=4096), record("c"))
    async with client_for(swarm) as client:
        nodes = await client.nodes()
        assert [n.node_id for n in nodes] == sorted([nid("a"), nid("b"), nid("c")])
        models = {m.id: m for m in await client.models()}
        assert models[MODEL].nodes == 2 and models["other"].nodes == 1
        assert models["other"].n_ctx == 4096


async def test_seed_url_overrides_the_advertised_url() -> None:
    rec = record("a", url="http://unreachable.test")
    swarm = FakeSwarm(rec)
    async with client_for(swarm) as client:
        assert client.url_of(rec) == "http://a.test"
        await client.generate("hi")
    assert swarm.served() == ["a"]


async def test_withdrawn_nodes_are_not_used() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    async with client_for(swarm) as client:
        client.records.merge([record("b", seq=2, withdrawn=True), record("b", seq=1)])
        assert [n.node_id for n in await client.nodes()] == [nid("a")]
        for _ in range(4):
            await client.generate("hi")
    assert set(swarm.served()) == {"a"}


def test_record_cache_expiry_uses_first_sight_and_issue_time() -> None:
    now = [100.0]
    wall = 1_000_000.0
    cache = RecordCache(clock=lambda: now[0], wall_clock=lambda: wall)
    cache.merge([record("a", ttl=30.0, issued_at=wall)])
    now[0] += 20
    cache.merge([record("a", ttl=30.0, issued_at=wall)])  # same seq again: no extension
    assert [r.node_id for r in cache.live()] == [nid("a")]
    now[0] += 11
    assert cache.live() == []
    # a newer seq is a new lease
    cache.merge([record("a", seq=2, ttl=30.0, issued_at=wall)])
    assert len(cache.live()) == 1
    # a record issued long ago (a replay) is never admitted
    cache.merge([record("old", ttl=30.0, issued_at=wall - 3600)])
    assert [r.node_id for r in cache.live()] == [nid("a")]
    # an older seq never replaces a newer one
    cache.merge([record("a", seq=1, ttl=30.0, issued_at=wall)])
    assert cache.live()[0].seq == 2


def test_record_cache_drops_forged_records() -> None:
    cache = RecordCache()
    genuine = record("a")
    forged_url = genuine.model_copy(update={"url": "http://evil.test", "seq": 2})
    stolen_id = record("b").model_copy(update={"node_id": genuine.node_id, "seq": 3})
    unsigned = genuine.model_copy(update={"signature": "", "seq": 4})
    cache.merge([genuine, forged_url, stolen_id, unsigned])
    assert cache.live() == [genuine]
    assert cache.rejected == 3


async def test_refresh_runs_before_records_expire() -> None:
    swarm = FakeSwarm(record("a", ttl=3.0))
    async with client_for(swarm, refresh_interval=5.0) as client:
        assert client.discovery.refresh_delay() == 1.5
        client.records.merge([bump(swarm.records[0], ttl=300.0)])
        assert client.discovery.refresh_delay() == 5.0


async def test_no_reachable_seed_means_no_node_available() -> None:
    transport = httpx.MockTransport(refuse)
    async with LlamaNetClient(nodes=["http://a.test"], transport=transport) as client:
        assert await client.nodes() == []
        with pytest.raises(NoNodeAvailable, match=r"no node known: discovery from http://a.test"):
            await client.generate("hi")


# --------------------------------------------------------------------------- requests


async def test_generate_sends_a_streaming_request_with_auth() -> None:
    swarm = FakeSwarm(record("a"))
    async with client_for(swarm, api_key="sekrit", model=MODEL) as client:
        result = await client.generate("Say hi", max_tokens=12, temperature=0.0, seed=7)
    assert result.text == "hello" and result.node_id == nid("a")
    sent = swarm.requests[0]
    assert sent.headers["Authorization"] == "Bearer sekrit"
    assert "X-LlamaNet-Forwarded-By" not in sent.headers
    body = json.loads(sent.content)
    assert body["prompt"] == "Say hi" and body["max_tokens"] == 12 and body["seed"] == 7
    assert body["model"] == MODEL and "messages" not in body


async def test_chat_accepts_dicts_and_messages() -> None:
    swarm = FakeSwarm(record("a"))
    async with client_for(swarm) as client:
        await client.chat(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        )
    body = json.loads(swarm.requests[0].content)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "prompt" not in body


async def test_invalid_arguments_fail_before_any_request() -> None:
    swarm = FakeSwarm(record("a"))
    async with client_for(swarm) as client:
        with pytest.raises(ValueError):
            await client.generate("hi", temperature=5.0)
    assert swarm.calls == []


# --------------------------------------------------------------------------- failover


async def test_connection_refused_fails_over_and_cools_down() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", refuse)
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        result = await client.generate("hi")
        assert result.node_id == nid("b")
        assert swarm.served() == ["a", "b"]
        assert client.selector.in_cooldown(nid("a"))
        assert not client.selector.in_cooldown(nid("b"))
        await client.generate("hi")  # the cooling node is not tried again
        assert swarm.served() == ["a", "b", "b"]


async def test_full_queue_fails_over_without_cooldown() -> None:
    """A 503 with Retry-After (queue full) is busy, not broken: skipped for this request only."""
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", status(503, "server_overloaded", "queue_full", {"Retry-After": "7"}))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        assert (await client.generate("hi")).node_id == nid("b")
        assert not client.selector.in_cooldown(nid("a"))
        swarm.on("a", ok)
        first_choice(client, swarm, "a")
        assert (await client.generate("hi")).node_id == nid("a")  # its queue has room again


async def test_every_node_busy_says_so() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    for name in "ab":
        swarm.on(name, status(503, "server_overloaded", "queue_full", {"Retry-After": "3"}))
    async with client_for(swarm) as client:
        with pytest.raises(NoNodeAvailable, match="was busy") as info:
            await client.generate("hi")
    assert {a.status for a in info.value.attempts} == {503}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("code", "headers", "cools_down"),
    [
        (500, None, True),
        (502, None, True),
        (504, None, True),
        (503, None, True),  # no Retry-After: not a full queue (a model that failed to load)
        (503, {"Retry-After": "2"}, False),
        (429, None, False),
        (429, {"Retry-After": "2"}, False),
    ],
)
async def test_retryable_statuses_fail_over(
    code: int, headers: dict[str, str] | None, cools_down: bool
) -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", status(code, headers=headers))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        assert (await client.generate("hi")).node_id == nid("b")
        assert client.selector.in_cooldown(nid("a")) is cools_down


async def test_timeout_fails_over() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", slow)
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        assert (await client.generate("hi")).node_id == nid("b")


@pytest.mark.parametrize("code", [400, 401, 413])
async def test_caller_errors_raise_at_once(code: int) -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", status(code, "invalid_request_error", "context_length_exceeded"))
    swarm.on("b", status(code, "invalid_request_error", "context_length_exceeded"))
    async with client_for(swarm) as client:
        with pytest.raises(NodeError) as info:
            await client.generate("hi")
        assert info.value.status == code
        assert info.value.error.code == "context_length_exceeded"
        assert len(swarm.served()) == 1  # no other node was bothered
        assert not any(client.selector.in_cooldown(n) for n in (nid("a"), nid("b")))


async def test_stale_record_model_not_found_fails_over() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", status(404, "not_found_error", "model_not_found"))
    async with client_for(swarm, model=MODEL) as client:
        first_choice(client, swarm, "a")
        assert (await client.generate("hi")).node_id == nid("b")


async def test_retries_bound_the_attempts() -> None:
    swarm = FakeSwarm(record("a"), record("b"), record("c"))
    for name in "abc":
        swarm.on(name, status(500))
    async with client_for(swarm, retries=1) as client:
        with pytest.raises(NoNodeAvailable) as info:
            await client.generate("hi")
    assert len(swarm.served()) == 2
    assert len(info.value.attempts) == 2
    assert all(isinstance(a, NodeError) and a.status == 500 for a in info.value.attempts)


async def test_all_nodes_cooling_down_means_no_node_available() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    async with client_for(swarm) as client:
        client.selector.mark_failed(nid("a"))
        client.selector.mark_failed(nid("b"))
        with pytest.raises(NoNodeAvailable, match="2 of them cooling down"):
            await client.generate("hi")
    assert swarm.calls == []


async def test_a_gateway_is_not_counted_as_serving_a_model() -> None:
    """A `--no-model` gateway's record lists no model: it serves none (issue 13)."""
    gateway = sign_record(
        identity("g"),
        url="http://g.test",
        models=[],
        version="test",
        started_at=0.0,
        seq=1,
        ttl=30.0,
    )
    swarm = FakeSwarm(record("a"), gateway)
    async with client_for(swarm) as client:
        client.selector.mark_failed(nid("a"))
        with pytest.raises(NoNodeAvailable, match="1 known serve it, 1 of them cooling"):
            await client.generate("hi")
    assert swarm.calls == []


async def test_a_node_that_fails_its_probe_is_never_preferred() -> None:
    """A failed /health probe cools the node down instead of leaving its rtt unknown (0), which
    made it the favourite (issue 13)."""

    def probe_fails(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("frozen", request=request)

    swarm = FakeSwarm(record("a"), record("b"))
    handler = swarm.handler

    def routed(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test" and request.url.path == "/health":
            return probe_fails(request)
        return handler(request)

    transport = httpx.MockTransport(routed)
    async with LlamaNetClient(nodes=["http://b.test"], transport=transport) as client:
        await client.discovery.probe_rtts()
        assert client.selector.in_cooldown(nid("a"))
        assert client.selector.rtt(nid("a")) is None and client.selector.rtt(nid("b")) is not None
        for _ in range(5):
            assert (await client.generate("hi")).node_id == nid("b")


async def test_a_silent_node_is_left_after_the_first_byte_deadline() -> None:
    """No answer within `first_byte_timeout` and no answer to /health: the next node serves."""

    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    swarm = FakeSwarm(record("a"), record("b"))

    async def routed(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test" and request.url.path != "/nodes":
            return await silent(request)
        return swarm.handler(request)

    transport = httpx.MockTransport(routed)
    async with LlamaNetClient(
        nodes=["http://b.test"], transport=transport, first_byte_timeout=0.1, refresh_interval=3600
    ) as client:
        client._refresher.cancel()  # type: ignore[union-attr]  # no probes: the request finds out
        first_choice(client, swarm, "a")
        assert (await client.generate("hi")).node_id == nid("b")
        assert client.selector.in_cooldown(nid("a"))
        first_choice(client, swarm, "a")
        chunks = [c async for c in client.generate_stream("hi")]
        assert chunks[-1].node_id == nid("b")


async def test_unknown_model_means_no_node_available() -> None:
    swarm = FakeSwarm(record("a"))
    async with client_for(swarm) as client:
        with pytest.raises(NoNodeAvailable, match="'missing'"):
            await client.generate("hi", model="missing")


async def test_context_filter_prefers_nodes_that_fit() -> None:
    swarm = FakeSwarm(record("small", n_ctx=512), record("big", n_ctx=8192))
    prompt = "word " * 300  # estimated well above 256 tokens
    assert estimate_prompt_tokens(prompt) + 256 > 512
    async with client_for(swarm, nodes=["http://small.test"]) as client:
        for _ in range(5):
            await client.generate(prompt, max_tokens=256)
    assert set(swarm.served()) == {"big"}


async def test_context_estimate_does_not_rule_out_the_only_candidate() -> None:
    """The estimate is high on purpose; when nothing fits it, the node decides exactly."""
    swarm = FakeSwarm(record("small", n_ctx=512))
    async with client_for(swarm, nodes=["http://small.test"]) as client:
        await client.generate("word " * 400, max_tokens=16)
        with pytest.raises(NoNodeAvailable):
            await client.generate("hi", max_tokens=600)  # max_tokens alone exceeds n_ctx
    assert swarm.served() == ["small"]


async def test_load_is_spread_over_nodes() -> None:
    swarm = FakeSwarm(record("a"), record("b"), record("c"))
    # the background probes measure the fake transport's round trips: scheduling noise of a
    # millisecond or more on a loaded machine, which must not rank identical nodes apart
    selector = NodeSelector(tie_tolerance=0.25)
    async with client_for(swarm, selector=selector) as client:
        for _ in range(60):
            await client.generate("hi")
    assert set(swarm.served()) == {"a", "b", "c"}


# --------------------------------------------------------------------------- streams


async def test_stream_yields_every_chunk() -> None:
    swarm = FakeSwarm(record("a"))
    async with client_for(swarm) as client:
        chunks = await collect(client.generate_stream("hi", max_tokens=8))
        assert "".join(c.text for c in chunks) == "Hello"
        assert chunks[-1].finished and chunks[-1].usage is not None
        assert client.selector.in_flight(nid("a")) == 0
    assert swarm.served() == ["a"]


async def test_stream_fails_over_before_first_token() -> None:
    swarm = FakeSwarm(record("a"), record("b"), record("c"))
    swarm.on("a", refuse)
    swarm.on("b", status(503, "server_overloaded", "queue_full", {"Retry-After": "1"}))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        swarm.records = [bump(r, active=1) if r.node_id == nid("b") else r for r in swarm.records]
        client.records.merge(swarm.records)
        chunks = await collect(client.chat_stream([{"role": "user", "content": "hi"}]))
        assert {c.node_id for c in chunks} == {nid("c")}
        assert client.selector.in_cooldown(nid("a"))  # refused the connection: broken
        assert not client.selector.in_cooldown(nid("b"))  # queue full: merely busy
    assert swarm.served() == ["a", "b", "c"]


async def test_stream_error_event_before_tokens_fails_over() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", stream_of(sse_body(error_json("engine died", "server_error"), done=False)))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        chunks = await collect(client.generate_stream("hi"))
    assert chunks[0].node_id == nid("b")


async def test_stream_caller_error_event_is_raised() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    body = sse_body(error_json("bad", "invalid_request_error", "invalid_value"), done=False)
    swarm.on("a", stream_of(body))
    swarm.on("b", stream_of(body))
    async with client_for(swarm) as client:
        with pytest.raises(NodeError) as info:
            await collect(client.generate_stream("hi"))
    assert info.value.status is None and info.value.error.code == "invalid_value"
    assert len(swarm.served()) == 1


async def test_stream_error_event_after_tokens_is_an_interruption() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    body = sse_body(
        chunk("a", 0, "Hel"),
        chunk("a", 1, "lo"),
        error_json("engine died", "server_error", "generation_failed"),
        done=False,
    )
    swarm.on("a", stream_of(body))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        received: list[str] = []
        with pytest.raises(StreamInterrupted) as info:
            async for c in client.generate_stream("hi"):
                received.append(c.text)
    assert received == ["Hel", "lo"]
    assert info.value.node_id == nid("a") and info.value.tokens_received == 2
    assert info.value.error is not None and info.value.error.error.code == "generation_failed"
    assert swarm.served() == ["a"]  # never resent elsewhere after tokens went out


async def test_a_tool_call_stream_resumes_with_the_count_of_its_chunks() -> None:
    """One token's text became two chunks (a call's start, its first argument fragment): the
    resumption says how many text and call chunks went through, besides their token ids."""
    swarm = FakeSwarm(record("a", fingerprint="f00d"), record("b", fingerprint="f00d"))
    start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    head = sse_body(
        {**chunk("a", 0, ""), "tool_calls": [start], "llamanet_token_ids": [7, 8]},
        {**chunk("a", 1, ""), "tool_calls": [{"index": 0, "function": {"arguments": '{"x'}}]}
        | {"llamanet_token_ids": []},
        done=False,
    )
    swarm.on("a", stream_of(BrokenStream(head)))
    rest = {"index": 0, "function": {"arguments": '": 1}'}}
    swarm.on(
        "b",
        stream_of(
            sse_body(
                {**chunk("b", 2, ""), "tool_calls": [rest], "llamanet_token_ids": [9]},
                {**finished_chunk("b", 3), "finish_reason": "tool_calls"},
            )
        ),
    )
    tools = [{"type": "function", "function": {"name": "f"}}]
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        chunks = await collect(client.chat_stream([{"role": "user", "content": "hi"}], tools=tools))
    resume = json.loads(swarm.requests[-1].content)["llamanet"]["resume"]
    assert resume["token_ids"] == [7, 8] and resume["deltas"] == 2 and resume["index"] == 2
    assert resume["fingerprint"] == "f00d"
    calls = [call for c in chunks for call in c.tool_calls or []]
    assert [call.id for call in calls if call.id] == ["call_1"]
    assert "".join(c.function.arguments or "" for c in calls if c.function) == '{"x": 1}'
    assert [c.finish_reason for c in chunks if c.finished] == ["tool_calls"]


async def test_connection_lost_mid_stream_is_an_interruption() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", stream_of(BrokenStream(sse_body(chunk("a", 0, "Hel"), done=False))))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        with pytest.raises(StreamInterrupted, match=nid("a")[:12]) as info:
            await collect(client.generate_stream("hi"))
        assert info.value.tokens_received == 1 and info.value.url == "http://a.test"
        assert client.selector.in_flight(nid("a")) == 0


async def test_connection_lost_before_tokens_fails_over() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", stream_of(BrokenStream(b": keep-alive\n\n")))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        chunks = await collect(client.generate_stream("hi"))
    assert chunks[0].node_id == nid("b")


async def test_stream_ending_without_done_is_an_interruption() -> None:
    swarm = FakeSwarm(record("a"))
    swarm.on("a", stream_of(sse_body(chunk("a", 0, "Hel"), done=False)))
    async with client_for(swarm) as client:
        with pytest.raises(StreamInterrupted):
            await collect(client.generate_stream("hi"))


async def test_finished_chunk_without_done_is_complete() -> None:
    swarm = FakeSwarm(record("a"))
    swarm.on(
        "a",
        stream_of(BrokenStream(sse_body(chunk("a", 0, "Hi"), finished_chunk("a", 1), done=False))),
    )
    async with client_for(swarm) as client:
        chunks = await collect(client.generate_stream("hi"))
    assert chunks[-1].finished


async def test_not_an_event_stream_fails_over() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    swarm.on("a", lambda request: httpx.Response(200, json={"unexpected": True}))
    async with client_for(swarm) as client:
        first_choice(client, swarm, "a")
        chunks = await collect(client.generate_stream("hi"))
    assert chunks[0].node_id == nid("b")


async def test_in_flight_counts_until_the_stream_ends() -> None:
    swarm = FakeSwarm(record("a"))
    async with client_for(swarm) as client:
        stream = client.generate_stream("hi")
        first = await anext(stream)
        assert first.text == "Hel"
        assert client.selector.in_flight(nid("a")) == 1
        await stream.aclose()  # the caller stops early
        assert client.selector.in_flight(nid("a")) == 0


# --------------------------------------------------------------------------- blocking facade


def test_sync_facade() -> None:
    swarm = FakeSwarm(record("a"), record("b"))
    transport = httpx.MockTransport(swarm.handler)
    with LlamaNetClient.sync(nodes=["http://a.test"], transport=transport) as client:
        assert client.generate("hi").text == "hello"
        assert client.chat([{"role": "user", "content": "hi"}]).node_id in {nid("a"), nid("b")}
        assert "".join(c.text for c in client.generate_stream("hi")) == "Hello"
        stream = client.chat_stream([{"role": "user", "content": "hi"}])
        assert next(stream).text == "Hel"
        stream.close()  # breaking out early closes the request
        assert [m.id for m in client.models()] == [MODEL]
        assert len(client.nodes()) == 2
        assert client.client.selector.in_flight(nid("a")) == 0
