"""What a node's stream routes do for resumption (fast tier, `FakeEngine` in process): token ids
in the choice-event chunk formats, a resumed stream's id and missing role chunk, keep-alives,
and the refusals (fingerprint mismatch 409, `n` > 1 or tools 400, no resumption without a
stream). The relay side is in `tests/test_resume_unit.py`, the real swarm in
`tests/test_resume.py`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, serving
from wiring import pieces

from llamanet.node.config import NodeSettings
from llamanet.node.node import LlamaNetNode
from llamanet.swarm.resume import TOKEN_IDS_FIELD

CHAT = [{"role": "user", "content": "Say hi."}]
FINGERPRINT = "sha256:test"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def http(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    settings = NodeSettings(home=tmp_path, request_timeout=30, max_body_size=64 * 1024)
    async with serving(settings, engine) as client:
        transport = client._transport
        assert isinstance(transport, httpx.ASGITransport)
        node: LlamaNetNode = transport.app.state.node  # type: ignore[attr-defined]
        node.fingerprint = FINGERPRINT  # an engine handed in is never hashed
        yield client


def payloads(res: httpx.Response) -> list[Any]:
    assert res.status_code == 200, res.text
    out = []
    for line in res.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def resume(ids: list[int], **more: Any) -> dict[str, Any]:
    return {"resume": {"token_ids": ids, "fingerprint": FINGERPRINT, **more}}


async def test_chat_chunks_carry_token_ids_when_asked(http: httpx.AsyncClient) -> None:
    body = {"messages": CHAT, "stream": True, "llamanet": {"token_ids": True}}
    chunks = payloads(await http.post("/v1/chat/completions", json=body))
    texts = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c[TOKEN_IDS_FIELD] for c in texts] == [[101], [102], [103], [104]]
    plain = payloads(await http.post("/v1/chat/completions", json={**body, "llamanet": None}))
    assert all(TOKEN_IDS_FIELD not in c for c in plain)


async def test_a_resumed_chat_stream_keeps_its_id_and_sends_no_role(
    http: httpx.AsyncClient,
) -> None:
    body = {
        "messages": CHAT,
        "stream": True,
        "llamanet": resume([101, 102], id="chatcmpl-x", created=123),
    }
    chunks = payloads(await http.post("/v1/chat/completions", json=body))
    assert {(c["id"], c["created"]) for c in chunks} == {("chatcmpl-x", 123)}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == " world!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_resumed_native_and_completion_streams(http: httpx.AsyncClient) -> None:
    native = {"prompt": "Hi", "llamanet": resume([101], index=5)}
    chunks = payloads(await http.post("/generate/stream", json=native))
    assert [c["index"] for c in chunks] == [5, 6, 7, 8]
    assert [c.get(TOKEN_IDS_FIELD) for c in chunks[:-1]] == [[102], [103], [104]]
    completion = {"prompt": "Hi", "stream": True, "echo": True, "llamanet": resume([101])}
    chunks = payloads(await http.post("/v1/completions", json=completion))
    assert "".join(c["choices"][0]["text"] for c in chunks) == ", world!"  # no second echo


async def test_resumptions_refused(http: httpx.AsyncClient) -> None:
    other = {"resume": {"token_ids": [101], "fingerprint": "sha256:other"}}
    res = await http.post(
        "/v1/chat/completions", json={"messages": CHAT, "stream": True, "llamanet": other}
    )
    assert res.status_code == 409, res.text
    assert res.json()["error"]["code"] == "fingerprint_mismatch"
    for extra, param in (
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"stream": False}, "llamanet"),
    ):
        body = {"messages": CHAT, "stream": True, "llamanet": resume([101]), **extra}
        res = await http.post("/v1/chat/completions", json=body)
        assert res.status_code == 400, res.text
        assert res.json()["error"]["param"] == param


async def test_keepalive_comments_while_no_event_comes(tmp_path: Path) -> None:
    settings = NodeSettings(home=tmp_path, request_timeout=30, keepalive_interval=0.05)
    engine = FakeEngine(delay=0.2)
    async with serving(settings, engine) as http:
        res = await http.post("/generate/stream", json={"prompt": "Hi", "max_tokens": 2})
    assert res.status_code == 200
    assert ": keep-alive" in res.text
    assert [
        json.loads(line[6:])["text"] for line in res.text.splitlines() if line.startswith("data: {")
    ][:2] == ["Hello", ","]


async def test_a_resumed_structured_stream_checks_the_whole_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last check of structured output reads the whole content: the replayed part too."""
    engine = FakeEngine(pieces=pieces('{"a": [1, 2]}', 3))
    settings = NodeSettings(home=tmp_path, request_timeout=30)
    body = {
        "messages": CHAT,
        "stream": True,
        "response_format": {"type": "json_object"},
        "llamanet": resume([101, 102]),
    }
    async with serving(settings, engine) as http:
        node: LlamaNetNode = http._transport.app.state.node  # type: ignore[attr-defined]
        node.fingerprint = FINGERPRINT
        chunks = payloads(await http.post("/v1/chat/completions", json=body))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "[1, 2]}" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "does not validate" not in caplog.text
