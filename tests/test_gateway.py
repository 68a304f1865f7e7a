"""The gateway in process: a FastAPI app whose one route forwards through `Gateway`, in front of
SCRIPTED peers (`httpx.MockTransport`, not real nodes). Real node processes run the same code in
test_forwarding.py / test_faults.py; here the failover outcomes are pinned down exactly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from llamanet.node.errors import install_error_handlers
from llamanet.node.gateway import Gateway
from llamanet.protocol import ModelInfo, NodeRecord

MODEL = "alpha"
SELF = "0" * 40
Behaviour = Callable[[httpx.Request], Awaitable[httpx.Response]]


def rec(name: str, *, model: str = MODEL, started_at: float = 1.0, seq: int = 1) -> NodeRecord:
    return NodeRecord(
        node_id=name * 40 if len(name) == 1 else name,
        public_key="00" * 32,
        url=f"http://{name}.test",
        models=[ModelInfo(id=model, n_ctx=2048)] if model else [],
        tokens_per_second=10.0,
        version="test",
        started_at=started_at,
        seq=seq,
        issued_at=0.0,
        ttl=30.0,
    )


def sse(*events: Any, done: bool = True) -> bytes:
    out = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
    return (out + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"delta": {"content": text}}],
    }


class BreaksAfter(httpx.AsyncByteStream):
    """A body that delivers `head` (possibly ending mid-event) and then loses the connection."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, content=sse(chunk("Hi")), headers={"content-type": "text/event-stream"}
    )


async def frozen(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(3600)  # SIGSTOP: accepts the connection, never answers anything
    raise AssertionError("unreachable")


def status(code: int, err_code: str, retry_after: str | None = None) -> Behaviour:
    async def respond(request: httpx.Request) -> httpx.Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        body = {"error": {"message": "no", "type": "x", "param": None, "code": err_code}}
        return httpx.Response(code, json=body, headers=headers)

    return respond


class Peers:
    """Scripted peers by host name; `/health` answers unless the peer is frozen."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.calls: list[str] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host.removesuffix(".test")
        behaviour = self.behaviour.get(name, ok)
        if request.url.path == "/health":
            if behaviour is frozen:
                return await frozen(request)
            return httpx.Response(200, json={"status": "ok"})
        self.calls.append(name)
        return await behaviour(request)


class Harness:
    def __init__(self, records: list[NodeRecord], **kwargs: Any) -> None:
        self.records = records
        self.peers = Peers()
        self.states: list[dict[str, Any]] = []

        async def find_nodes() -> list[NodeRecord]:
            return list(self.records)

        kwargs.setdefault("first_byte_timeout", 0.2)
        self.gateway = Gateway(
            node_id=SELF,
            find_nodes=find_nodes,
            swarm_key=None,
            heartbeat=10.0,
            request_timeout=30.0,
            transport=httpx.MockTransport(self.peers.handler),
            **kwargs,
        )
        app = FastAPI()
        install_error_handlers(app)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self.states.append(request.scope.setdefault("state", {}))
            return await self.gateway.forward(request, MODEL, max_tokens=16)

        self.app = app

    def prefer(self, *names: str) -> None:
        """Rank peers in this order (the others look busier)."""
        for index, name in enumerate(names):
            for i, r in enumerate(self.records):
                if r.url == f"http://{name}.test":
                    self.records[i] = r.model_copy(update={"active": index * 10})

    async def post(self) -> httpx.Response:
        await self.gateway.refresh()
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            return await client.post("/v1/chat/completions", json=body, timeout=30)

    def cooling(self, name: str) -> bool:
        return self.gateway.selector.in_cooldown(name * 40)


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(records: list[NodeRecord], **kwargs: Any) -> Harness:
        made.append(Harness(records, **kwargs))
        return made[-1]

    yield make
    for h in made:
        await h.gateway.close()


# --------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("behaviour", "cools_down"),
    [
        (status(503, "queue_full", "3"), False),  # busy: skipped for this request only
        (status(429, "rate_limit_exceeded", "5"), False),
        (status(404, "model_not_found"), False),  # a stale record
        (status(500, "generation_failed"), True),
        (status(503, "model_load_failed"), True),  # a 503 without Retry-After is not busy
        (frozen, True),  # no head, no answer to the probe: frozen
    ],
)
async def test_first_choice_fails_and_the_next_peer_serves(
    harness: Callable[..., Harness], behaviour: Behaviour, cools_down: bool
) -> None:
    h = harness([rec("a"), rec("b")])
    h.prefer("a", "b")
    h.peers.behaviour["a"] = behaviour
    response = await h.post()
    assert response.status_code == 200 and b"Hi" in response.content
    assert h.peers.calls == ["a", "b"]
    assert h.cooling("a") is cools_down
    assert not h.cooling("b")


async def test_a_caller_error_is_relayed_as_is(harness: Callable[..., Harness]) -> None:
    h = harness([rec("a"), rec("b")])
    h.prefer("a", "b")
    h.peers.behaviour["a"] = status(400, "context_length_exceeded")
    response = await h.post()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert h.peers.calls == ["a"] and not h.cooling("a")


async def test_a_slow_but_live_peer_is_waited_for(harness: Callable[..., Harness]) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.6)  # three first-byte deadlines; its /health answers at once
        return await ok(request)

    h = harness([rec("a"), rec("b")])
    h.prefer("a", "b")
    h.peers.behaviour["a"] = slow
    response = await h.post()
    assert response.status_code == 200 and h.peers.calls == ["a"]
    assert not h.cooling("a")


async def test_every_peer_busy_is_503_with_the_shortest_retry_after(
    harness: Callable[..., Harness],
) -> None:
    h = harness([rec("a"), rec("b")])
    h.peers.behaviour["a"] = status(503, "queue_full", "4")
    h.peers.behaviour["b"] = status(503, "queue_full", "2")
    response = await h.post()
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "no_capacity"
    assert not h.cooling("a") and not h.cooling("b")


async def test_broken_peers_are_502_with_retry_after(harness: Callable[..., Harness]) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    h = harness([rec("a"), rec("b")])
    h.peers.behaviour["a"] = refuse
    h.peers.behaviour["b"] = status(500, "generation_failed")
    response = await h.post()
    assert response.status_code in (500, 502)
    assert "Retry-After" in response.headers
    assert h.cooling("a") and h.cooling("b")


async def test_a_model_seen_recently_is_503_not_404(harness: Callable[..., Harness]) -> None:
    """Every node of a model down: a temporary outage, not an unknown model (issue 13)."""
    h = harness([rec("a")])
    assert (await h.post()).status_code == 200
    h.records.clear()  # its records expired
    response = await h.post()
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    h.gateway._models_seen.clear()  # never seen at all: unknown
    response = await h.post()
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_all_cooling_down_is_503(harness: Callable[..., Harness]) -> None:
    h = harness([rec("a")])
    h.gateway.selector.mark_failed("a" * 40)
    response = await h.post()
    assert response.status_code == 503 and "Retry-After" in response.headers


# --------------------------------------------------------------------------- broken streams


@pytest.mark.parametrize("cut_mid_event", [False, True])
async def test_a_stream_broken_midway_ends_with_an_error_event(
    harness: Callable[..., Harness], cut_mid_event: bool
) -> None:
    head = sse(chunk("Hel"), chunk("lo"), done=False)
    if cut_mid_event:
        head += b'data: {"id": "chatcmpl-1", "obj'

    async def breaks(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=BreaksAfter(head), headers={"content-type": "text/event-stream"}
        )

    h = harness([rec("a"), rec("b")])
    h.prefer("a", "b")
    h.peers.behaviour["a"] = breaks
    response = await h.post()
    events = [e for e in response.text.split("\n\n") if e]
    assert [json.loads(e.removeprefix("data: ")) for e in events[:2]] == [
        chunk("Hel"),
        chunk("lo"),
    ]
    assert len(events) == 3  # no half event before the error
    error = json.loads(events[2].removeprefix("data: "))["error"]
    assert error["code"] == "peer_stream_broken" and error["type"] == "upstream_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert h.states[-1]["failed_status"] == 502  # the access log and /metrics count a 502
    assert h.cooling("a")
    assert h.peers.calls == ["a"]  # tokens went out: never resent elsewhere


class Trickle(httpx.AsyncByteStream):
    """A body that sends one chunk event every `every` seconds, `count` of them (None: forever),
    then [DONE]; `closed` is set when the gateway lets go of it."""

    def __init__(self, every: float, count: int | None = None) -> None:
        self.every, self.count, self.sent = every, count, 0
        self.closed = asyncio.Event()
        self.flowing = asyncio.Event()  # 3 events sent

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.count is None or self.sent < self.count:
            yield sse(chunk(f"t{self.sent}"), done=False)
            self.sent += 1
            if self.sent == 3:
                self.flowing.set()
            await asyncio.sleep(self.every)
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        self.closed.set()


def trickling(body: Trickle) -> Behaviour:
    async def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body, headers={"content-type": "text/event-stream"})

    return respond


async def test_a_stopping_node_ends_the_streams_it_relays_with_shutting_down(
    harness: Callable[..., Harness],
) -> None:
    """Past the grace, a relayed stream still running ends with a whole `shutting_down`
    event (not a cut connection), and its upstream is closed."""
    body = Trickle(0.02)
    h = harness([rec("a")])
    h.peers.behaviour["a"] = trickling(body)
    answer = asyncio.create_task(h.post())
    await asyncio.wait_for(body.flowing.wait(), 10)
    await h.gateway.drain(0.1)
    response = await asyncio.wait_for(answer, 10)
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert len(events) > 3
    assert [json.loads(e) for e in events[:-1]] == [chunk(f"t{i}") for i in range(len(events) - 1)]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "shutting_down" and set(error) == {"message", "type", "param", "code"}
    assert h.states[-1]["failed_status"] == 503
    await asyncio.wait_for(body.closed.wait(), 5)
    assert not h.cooling("a")  # the peer did nothing wrong


async def test_a_relayed_stream_that_ends_within_the_grace_is_left_whole(
    harness: Callable[..., Harness],
) -> None:
    body = Trickle(0.02, count=15)
    h = harness([rec("a")])
    h.peers.behaviour["a"] = trickling(body)
    answer = asyncio.create_task(h.post())
    await asyncio.wait_for(body.flowing.wait(), 10)
    await h.gateway.drain(10.0)  # returns when the stream is done, not after 10 s
    assert answer.done() or body.sent == 15
    response = await asyncio.wait_for(answer, 10)
    assert response.text == sse(*(chunk(f"t{i}") for i in range(15))).decode()
    assert "failed_status" not in h.states[-1]


# --------------------------------------------------------------------------- the peer list


async def test_a_tombstone_drops_its_node_from_the_cache_at_once(
    harness: Callable[..., Harness],
) -> None:
    a, b = rec("a", seq=5), rec("b")
    h = harness([a, b])
    await h.gateway.refresh()
    assert {r.node_id for r in h.gateway.peers()} == {a.node_id, b.node_id}
    tombstone = a.model_copy(update={"seq": 6, "withdrawn": True})
    h.gateway.withdrawn(tombstone)
    assert {r.node_id for r in h.gateway.peers()} == {b.node_id}
    # a lookup that was under way when the tombstone came must not bring the node back
    await h.gateway.refresh()
    assert {r.node_id for r in h.gateway.peers()} == {b.node_id}
    # a later incarnation comes back
    h.records[0] = rec("a", seq=7, started_at=2.0)
    await h.gateway.refresh()
    assert {r.node_id for r in h.gateway.peers()} == {a.node_id, b.node_id}


async def test_swarm_models_take_the_largest_context(harness: Callable[..., Harness]) -> None:
    small = rec("a").model_copy(update={"models": [ModelInfo(id=MODEL, n_ctx=512)]})
    h = harness([small, rec("b"), rec("g", model="")])
    await h.gateway.refresh()
    assert h.gateway.swarm_models() == {MODEL: (2, 2048)}


# --------------------------------------------------------------------------- the user gives up


def _request_that_leaves(after: float) -> Request:
    """A POST whose client disconnects `after` seconds after sending its body."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(after)
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "server": ("gw.test", 80),
        "scheme": "http",
    }
    return Request(scope, receive)


@pytest.mark.parametrize(("behaviour", "cools_down"), [(frozen, True), ("slow", False)])
async def test_a_user_giving_up_on_a_silent_peer_gets_it_checked(
    harness: Callable[..., Harness], behaviour: Any, cools_down: bool
) -> None:
    """The user leaves before the first-byte deadline: the gateway probes the peer it was
    waiting on and cools it down if it does not answer (a frozen node), not if it does."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)  # busy with a long answer, but its /health answers
        raise AssertionError("unreachable")

    h = harness([rec("a")], first_byte_timeout=0.3)
    h.peers.behaviour["a"] = slow if behaviour == "slow" else behaviour
    await h.gateway.refresh()
    with pytest.raises(Exception) as info:
        await h.gateway.forward(_request_that_leaves(0.05), MODEL)
    assert getattr(info.value, "status", None) == 499
    await asyncio.gather(*h.gateway._probes)
    assert h.cooling("a") is cools_down
