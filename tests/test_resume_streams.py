"""What a node's stream routes do for resumption (fast tier, `FakeEngine` in process): token ids
in the choice-event chunk formats, a resumed stream's id and missing role chunk, keep-alives,
the refusals (fingerprint mismatch 409, `n` > 1 400, no resumption without a stream), and
tool-call streams cut after every one of their chunks and resumed from what a relay's
`StreamTranscript` saw: the client's calls (ids, names, arguments) and content come out as if
the stream had never broken. The relay side is in `tests/test_resume_unit.py`, the real swarm
in `tests/test_resume.py`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, serving
from wiring import ADD, WEATHER, pieces

from llamanet.node.config import NodeSettings
from llamanet.node.node import LlamaNetNode
from llamanet.swarm.resume import TOKEN_IDS_FIELD, StreamTranscript, resume_body

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
    for extra, param in (({"n": 2}, "n"), ({"stream": False}, "llamanet")):
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


# --------------------------------------------------------------------------- tool-call streams

HERMES = (  # enough of a Hermes template for its tool syntax to be recognised
    "{%- if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n"
    "{% endif %}{%- for message in messages %}{%- if message.role == 'assistant' and "
    "message.tool_calls %}{% for tc in message.tool_calls %}<tool_call>\n"
    '{"name": "{{ tc.function.name }}"}\n</tool_call>{% endfor %}{% else %}'
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}<|im_start|>assistant\n"
)
TWO_CALLS = (
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Lisbon", "days": 3}}, '
    '{"name": "add", "arguments": {"a": 1, "b": 2}}]}'
)
HERMES_CALLS = (
    'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}'
    '\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 40, "b": 2}}\n'
    "</tool_call>"
)
TOOL_STREAMS: dict[str, tuple[tuple[str, ...], str | None, Any]] = {  # pieces, template, choice
    "generic-required": (pieces(TWO_CALLS, 3), None, "required"),
    "generic-auto-answer": (pieces('{"response": "It is \\"sunny\\" \\u00e9."}', 2), None, "auto"),
    "generic-named": (
        pieces('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', 5),
        None,
        {"type": "function", "function": {"name": "get_weather"}},
    ),
    "hermes-auto": (pieces(HERMES_CALLS, 4), HERMES, "auto"),
    "hermes-auto-big-pieces": (pieces(HERMES_CALLS, 37), HERMES, "auto"),
    "hermes-auto-text": (pieces("No tool needed: <tool_ it is sunny.", 3), HERMES, "auto"),
}


def sse_events(res: httpx.Response) -> list[bytes]:
    assert res.status_code == 200, res.text
    return [e.encode() + b"\n\n" for e in res.text.split("\n\n") if e.startswith("data: ")]


def what_the_client_has(events: list[bytes], *, native: bool) -> dict[str, Any]:
    """A chat (or native) stream's events accumulated the way SDKs do."""
    content, roles, finishes = "", 0, []
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.decode()[6:].strip()
        if data == "[DONE]":
            continue
        payload = json.loads(data)
        if native:
            parts = [(payload, payload.get("text") or "", payload.get("finish_reason"))]
        else:
            parts = [
                (c["delta"], c["delta"].get("content") or "", c["finish_reason"])
                for c in payload["choices"]
            ]
        for delta, text, finish in parts:
            roles += "role" in delta
            content += text
            for call in delta.get("tool_calls") or []:
                got = calls.setdefault(call["index"], {"ids": [], "name": "", "arguments": ""})
                if call.get("id"):
                    got["ids"].append(call["id"])
                function = call.get("function") or {}
                got["name"] += function.get("name") or ""
                got["arguments"] += function.get("arguments") or ""
            if finish:
                finishes.append(finish)
    return {"content": content, "calls": calls, "finishes": finishes, "roles": roles}


@pytest.mark.parametrize("native", [False, True], ids=["chat", "native"])
@pytest.mark.parametrize("case", sorted(TOOL_STREAMS))
async def test_a_tool_call_stream_resumes_after_any_of_its_chunks(
    tmp_path: Path, case: str, native: bool
) -> None:
    script, template, choice = TOOL_STREAMS[case]
    metadata = {
        "general.name": "fake",
        **({"tokenizer.chat_template": template} if template else {}),
    }
    engine = FakeEngine(pieces=script, metadata=metadata)
    settings = NodeSettings(home=tmp_path, request_timeout=30)
    path = "/generate/stream" if native else "/v1/chat/completions"
    body: dict[str, Any] = {
        "messages": CHAT,
        "tools": [WEATHER, ADD],
        "tool_choice": choice,
        "stream": True,
        "max_tokens": 100,
    }
    async with serving(settings, engine) as http:
        node: LlamaNetNode = http._transport.app.state.node  # type: ignore[attr-defined]
        node.fingerprint = FINGERPRINT
        whole = sse_events(await http.post(path, json={**body, "llamanet": {"token_ids": True}}))
        reference = what_the_client_has(whole, native=native)
        assert reference["finishes"] == (["tool_calls"] if reference["calls"] else ["stop"])
        deltas = [i for i, e in enumerate(whole) if TOKEN_IDS_FIELD.encode() in e]
        assert len(deltas) >= 3, whole
        for cut in deltas:  # the client got every event up to this text or call chunk
            transcript = StreamTranscript(strip=True, native=native)
            delivered = [out for e in whole[: cut + 1] if (out := transcript.relay(e))]
            assert len(delivered) == cut + 1 and not transcript.whole
            again = resume_body(
                body,
                transcript.token_ids,
                fingerprint=FINGERPRINT,
                stream_id=transcript.stream_id,
                created=transcript.created,
                index=transcript.next_index,
                deltas=transcript.deltas,
            )
            rest = sse_events(await http.post(path, json=again))
            seen = what_the_client_has([*delivered, *rest], native=native)
            where = (case, cut, transcript.deltas)
            assert seen["content"] == reference["content"], where
            assert seen["finishes"] == reference["finishes"] and seen["roles"] == reference["roles"]
            assert sorted(seen["calls"]) == sorted(reference["calls"]), where
            for index, call in seen["calls"].items():
                expected = reference["calls"][index]
                assert (call["name"], call["arguments"]) == (
                    expected["name"],
                    expected["arguments"],
                ), where
                assert len(call["ids"]) == 1, where  # announced once, on either side
                if call["ids"][0] in str(delivered):  # the client saw it begin before the cut
                    assert call["ids"] == expected["ids"], where
                assert call["ids"][0].startswith("call_")
            ids = [call["ids"][0] for call in seen["calls"].values()]
            assert len(set(ids)) == len(ids)
            if native:
                chunks = [json.loads(e[6:]) for e in [*delivered, *rest] if b"[DONE]" not in e]
                assert [c["index"] for c in chunks] == list(range(len(chunks)))


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
