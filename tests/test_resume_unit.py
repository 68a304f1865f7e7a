"""Resume bookkeeping in process (fast tier): `StreamTranscript` (id accumulation, stripping,
the junction) and the gateway continuing a stream on a SCRIPTED peer (`httpx.MockTransport`,
not real nodes; tests/test_resume.py runs real processes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

from llamanet.node.errors import install_error_handlers
from llamanet.node.gateway import Gateway
from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.resume import StreamTranscript, can_resume, resume_body

MODEL = "alpha"


def rec(name: str, fingerprint: str | None = "f00d", active: int = 0) -> NodeRecord:
    return NodeRecord(
        node_id=name * 40,
        public_key="00" * 32,
        url=f"http://{name}.test",
        models=[ModelInfo(id=MODEL, n_ctx=2048, fingerprint=fingerprint, runtime="rt")],
        tokens_per_second=10.0,
        active=active,
        version="test",
        started_at=1.0,
        seq=1,
        issued_at=0.0,
        ttl=30.0,
    )


def chunk(text: str | None, ids: list[int], finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {"content": text} if text is not None else {"role": "assistant"}
    payload = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta if not finish else {}, "finish_reason": finish}],
        "llamanet_token_ids": ids,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_transcript_collects_ids_strips_them_and_names_the_nodes() -> None:
    t = StreamTranscript(strip=True)
    t.serving("a")
    out = [t.relay(chunk(None, [])), t.relay(chunk("He", [1, 2])), t.relay(b": keep-alive\n\n")]
    assert all(o is not None and b"llamanet_token_ids" not in o for o in out)
    assert out[2] == b": keep-alive\n\n"
    assert t.token_ids == [1, 2] and t.stream_id == "chatcmpl-x" and t.created == 7
    t.serving("b")
    final = t.relay(chunk(None, [], finish="stop"))
    assert final is not None and json.loads(final[6:])["llamanet"] == {"nodes": ["a", "b"]}
    assert (
        t.relay(b"data: [DONE]\n\n") == b"data: [DONE]\n\n" and t.relay(b"data: [DONE]\n\n") is None
    )


def test_resume_body_and_what_can_resume() -> None:
    body = {"model": MODEL, "messages": [], "stream": True, "seed": 3}
    out = resume_body(body, [5, 6], fingerprint="f00d", stream_id="chatcmpl-x", created=7)
    assert out["seed"] == 3 and out["llamanet"]["resume"]["token_ids"] == [5, 6]
    assert out["llamanet"]["resume"]["id"] == "chatcmpl-x" and "llamanet" not in body
    assert can_resume("/v1/chat/completions", body)
    assert not can_resume("/v1/chat/completions", {**body, "stream": False})
    assert not can_resume("/v1/chat/completions", {**body, "n": 2})
    assert not can_resume("/v1/chat/completions", out)  # a resumption is not resumed again
    assert can_resume("/generate/stream", {"prompt": "x"})
    tools = {**body, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert can_resume("/v1/chat/completions", {**tools, "tool_choice": "required"})
    assert resume_body(tools, [5], fingerprint=None, deltas=3)["llamanet"]["resume"]["deltas"] == 3


def test_transcript_counts_the_text_and_call_chunks() -> None:
    """What a tool-call stream's resumption needs besides the ids: how many chunks of text or
    calls went through (one token's text can be several), counted by their token-ids field."""
    t = StreamTranscript(strip=True)
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    role = {"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    events = [
        role,
        {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}], "llamanet_token_ids": [4]},
        {
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}],
            "llamanet_token_ids": [],
        },
    ]
    for event in events:
        out = t.relay(b"data: " + json.dumps(event).encode() + b"\n\n")
        assert out is not None and b"llamanet_token_ids" not in out
    assert (t.deltas, t.token_ids) == (2, [4])
    native = StreamTranscript(strip=False, native=True)
    native.relay(b'data: {"text": "a", "index": 0, "llamanet_token_ids": [1]}\n\n')
    native.relay(b'data: {"text": "", "index": 1, "finished": true}\n\n')
    assert (native.deltas, native.next_index, native.whole) == (1, 2, True)


class Breaks(httpx.AsyncByteStream):
    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx.RemoteProtocolError("peer closed connection")


class Stalls(httpx.AsyncByteStream):
    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        await asyncio.sleep(3600)


async def relay_through(records: list[NodeRecord], a_body: httpx.AsyncByteStream) -> dict[str, Any]:
    sent: dict[str, Any] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.host.removesuffix(".test")
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        sent[name] = json.loads(request.content)
        headers = {"content-type": "text/event-stream", "x-llamanet-node": name * 40}
        if name == "a":
            return httpx.Response(200, stream=a_body, headers=headers)
        if "resume" not in sent[name].get("llamanet", {}):  # the ranking is not under test
            error = {"error": {"message": "busy", "type": "x", "code": "queue_full"}}
            return httpx.Response(503, json=error, headers={"Retry-After": "1"})
        body = chunk(" world", [3], None) + chunk(None, [], "stop") + b"data: [DONE]\n\n"
        return httpx.Response(200, content=body, headers=headers)

    async def find_nodes() -> list[NodeRecord]:
        return records

    gateway = Gateway(
        node_id="0" * 40,
        find_nodes=find_nodes,
        swarm_key=None,
        heartbeat=10.0,
        request_timeout=30.0,
        first_byte_timeout=0.5,
        stall_timeout=0.3,
        transport=httpx.MockTransport(handler),
    )
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await gateway.forward(request, MODEL, max_tokens=16)

    try:
        await gateway.refresh()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            reply = await client.post("/v1/chat/completions", json=body, timeout=30)
        events = [e for e in reply.text.split("\n\n") if e.startswith("data: ")]
        return {"events": events, "sent": sent, "cooling": gateway.selector.in_cooldown("a" * 40)}
    finally:
        await gateway.close()


HEAD = chunk(None, []) + chunk("Hello", [1, 2])


async def test_a_broken_stream_continues_on_a_peer_with_the_same_fingerprint() -> None:
    got = await relay_through([rec("a"), rec("b", active=5), rec("c", "other")], Breaks(HEAD))
    texts = [json.loads(e[6:]) for e in got["events"] if e != "data: [DONE]"]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in texts)
    assert content == "Hello world" and got["events"][-1] == "data: [DONE]"
    assert all("llamanet_token_ids" not in c for c in texts)
    assert texts[-1]["llamanet"]["nodes"] == ["a" * 40, "b" * 40]
    resume = got["sent"]["b"]["llamanet"]["resume"]
    assert resume["token_ids"] == [1, 2] and resume["id"] == "chatcmpl-x"
    assert resume["fingerprint"] == "f00d" and got["cooling"]
    assert "resume" not in got["sent"].get("c", {}).get("llamanet", {})  # another model file


async def test_a_stalled_stream_continues_and_no_match_gives_the_error_event() -> None:
    got = await relay_through([rec("a"), rec("b", active=5)], Stalls(HEAD))
    assert "world" in "".join(got["events"]) and got["cooling"]
    alone = await relay_through([rec("a"), rec("c", "other")], Breaks(HEAD))
    assert json.loads(alone["events"][-1][6:])["error"]["code"] == "peer_stream_broken"
    assert "resume" not in alone["sent"].get("c", {}).get("llamanet", {})
