"""What a node's stream routes do for resumption (fast tier, `FakeEngine` in process): token ids
in the choice-event chunk formats, a resumed stream's id and missing role chunk, keep-alives,
the refusals (fingerprint mismatch 409, `n` > 1 400, no resumption without a stream), and
streams cut after every one of their chunks and resumed from what a relay's `StreamTranscript`
saw: tool-call streams (the client's calls, ids, names and arguments, and content come out as
if the stream had never broken) and plain chat, completion and native streams (the same text,
also where the last chunk before the finish brings text a replay of the ids holds back: a
stop sequence's possible start or a UTF-8 character cut by the budget, released at the end,
with no token id of its own). The relay side is in `tests/test_resume_unit.py`, the real swarm
in `tests/test_resume.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, serving
from wiring import ADD, WEATHER, pieces

from llamanet import LlamaNetClient
from llamanet.node.config import NodeSettings
from llamanet.node.node import LlamaNetNode
from llamanet.protocol import ModelInfo
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import sign_record
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
    """A chat, completion (or native) stream's events accumulated the way SDKs do."""
    content, roles, finishes = "", 0, []
    calls: dict[int, dict[str, Any]] = {}
    ids: set[str] = set()
    for event in events:
        data = event.decode()[6:].strip()
        if data == "[DONE]":
            continue
        payload = json.loads(data)
        if native:
            parts = [(payload, payload.get("text") or "", payload.get("finish_reason"))]
        else:
            ids.add(payload["id"])
            parts = [
                (delta, delta.get("content") or c.get("text") or "", c["finish_reason"])
                for c in payload["choices"]
                for delta in [c.get("delta") or {}]
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
    return {"content": content, "calls": calls, "finishes": finishes, "roles": roles, "ids": ids}


async def cut_and_resumed(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], whole: list[bytes], cut: int
) -> tuple[list[bytes], list[bytes], StreamTranscript]:
    """The events a client got of `whole` up to event `cut` (through a relay's transcript), the
    rest from the resumption the relay asks for, and the transcript."""
    transcript = StreamTranscript(strip=True, native=path == "/generate/stream")
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
    return delivered, sse_events(await http.post(path, json=again)), transcript


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
            delivered, rest, transcript = await cut_and_resumed(http, path, body, whole, cut)
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


# --------------------------------------------------------------------------- plain streams


def utf8_tokens(text: str, size: int = 2) -> tuple[bytes, ...]:
    """`text`'s UTF-8 bytes cut in tokens of `size` bytes: characters split across tokens."""
    data = text.encode()
    return tuple(data[i : i + size] for i in range(0, len(data), size))


# tokens, tail (held back, released at the end), max_tokens, whether the last text chunk
# carries no token id of its own
PLAIN_STREAMS: dict[str, tuple[tuple[str | bytes, ...], str, int, bool]] = {
    # the last token released " and " and held "e" back (a stop sequence "e!" might follow):
    # the end of the generation releases it in a chunk of its own, with no new token ids
    "held-back-tail": (("It", " is", " warm", " and "), "e", 100, True),
    # the last two tokens' text was all held back: their ids ride on the released tail
    "held-back-tokens": (("It", " is", " wa", "", ""), "rm", 100, False),
    "utf-8-split": (utf8_tokens("Ça va? 日本語 ok ñ"), "", 100, False),
    # cut by max_tokens inside a character: the decoder's end releases U+FFFD, no new ids
    "utf-8-cut-by-the-budget": (utf8_tokens("café 日本"), "", 5, True),
}
PLAIN_APIS: dict[str, tuple[str, dict[str, Any], str]] = {  # path, body, echoed text
    "chat": ("/v1/chat/completions", {"messages": CHAT, "stream": True}, ""),
    "completions": ("/v1/completions", {"prompt": "Hi", "stream": True, "echo": True}, "Hi"),
    "native": ("/generate/stream", {"prompt": "Hi"}, ""),
}


@pytest.mark.parametrize("api", sorted(PLAIN_APIS))
@pytest.mark.parametrize("case", sorted(PLAIN_STREAMS))
async def test_a_plain_stream_resumes_after_any_of_its_chunks(
    tmp_path: Path, case: str, api: str
) -> None:
    """Cut after every chunk before its finish and resumed from what a relay saw: the client's
    text is the uninterrupted text however text and token ids line up at the junction (text
    held back and released at the end, with or without ids of its own; characters split
    across tokens), with one finish and one stream id (native: indexes without a gap)."""
    tokens, tail, max_tokens, bare_tail = PLAIN_STREAMS[case]
    path, request, echo = PLAIN_APIS[api]
    native = api == "native"
    engine = FakeEngine(pieces=tokens, tail=tail)
    settings = NodeSettings(home=tmp_path, request_timeout=30)
    body = {**request, "max_tokens": max_tokens}
    expected = b"".join(t.encode() if isinstance(t, str) else t for t in tokens[:max_tokens])
    async with serving(settings, engine) as http:
        node: LlamaNetNode = http._transport.app.state.node  # type: ignore[attr-defined]
        node.fingerprint = FINGERPRINT
        whole = sse_events(await http.post(path, json={**body, "llamanet": {"token_ids": True}}))
        reference = what_the_client_has(whole, native=native)
        assert reference["content"] == echo + expected.decode("utf-8", "replace") + tail
        assert reference["finishes"] == ["length" if max_tokens < len(tokens) else "stop"]
        texts = [json.loads(e[6:]) for e in whole if TOKEN_IDS_FIELD.encode() in e]
        assert (texts[-1][TOKEN_IDS_FIELD] == []) is bare_tail, texts[-1]
        finish = next(i for i, e in enumerate(whole) if b'"finish_reason":"' in e)
        for cut in range(finish):  # the client got every event up to this one
            delivered, rest, transcript = await cut_and_resumed(http, path, body, whole, cut)
            seen = what_the_client_has([*delivered, *rest], native=native)
            where = (case, cut, transcript.deltas, transcript.token_ids)
            assert seen["content"] == reference["content"], where
            assert seen["finishes"] == reference["finishes"], where
            assert (seen["roles"], seen["ids"]) == (reference["roles"], reference["ids"]), where
            if native:
                chunks = [json.loads(e[6:]) for e in [*delivered, *rest] if b"[DONE]" not in e]
                assert [c["index"] for c in chunks] == list(range(len(chunks))), where


async def test_without_deltas_the_replayed_text_counts_as_delivered(tmp_path: Path) -> None:
    """A relay from before `deltas` (none in the resumption): the chunks of the replayed
    tokens' text are the delivered ones, everything after is sent, as older nodes did."""
    engine = FakeEngine(pieces=("It", " is", " wa", "", ""), tail="rm")
    settings = NodeSettings(home=tmp_path, request_timeout=30)
    async with serving(settings, engine) as http:
        node: LlamaNetNode = http._transport.app.state.node  # type: ignore[attr-defined]
        node.fingerprint = FINGERPRINT
        for ids, rest in (([], "It is warm"), ([101, 102], " warm"), ([101, 102, 103, 104], "rm")):
            body = {"messages": CHAT, "stream": True, "llamanet": resume(ids)}
            chunks = payloads(await http.post("/v1/chat/completions", json=body))
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert text == rest, ids


@pytest.mark.parametrize("case", sorted(PLAIN_STREAMS))
async def test_the_client_resumes_a_plain_stream_after_any_of_its_chunks(
    tmp_path: Path, case: str
) -> None:
    """`LlamaNetClient` counts the chunks as a relay's transcript does (an empty ids field
    included), so the node it resumes on agrees: its stream from node a, broken after every
    chunk before the finish, goes on from node b with the uninterrupted text. Both names are
    one in-process node behind a FAKE transport (signed records, the same fingerprint)."""
    tokens, tail, max_tokens, _ = PLAIN_STREAMS[case]
    engine = FakeEngine(pieces=tokens, tail=tail)
    settings = NodeSettings(home=tmp_path, request_timeout=30)
    body = {"prompt": "Hi", "max_tokens": max_tokens, "llamanet": {"token_ids": True}}
    model = ModelInfo(id=engine.model_id, n_ctx=engine.n_ctx, fingerprint=FINGERPRINT)
    records = [  # b looks busier: a serves first
        sign_record(
            NodeIdentity.generate(),
            url=f"http://{name}.test",
            models=[model],
            active=active,
            tokens_per_second=10.0,
            version="test",
            started_at=0.0,
            seq=1,
            issued_at=time.time(),
            ttl=60.0,
        )
        for name, active in (("a", 0), ("b", 5))
    ]
    async with serving(settings, engine) as http:
        node: LlamaNetNode = http._transport.app.state.node  # type: ignore[attr-defined]
        node.fingerprint = FINGERPRINT
        whole = sse_events(await http.post("/generate/stream", json=body))
        reference = what_the_client_has(whole, native=True)
        sent: list[dict[str, Any]] = []
        cut = 0

        async def broken(head: bytes) -> AsyncIterator[bytes]:
            yield head
            raise httpx.ReadError("connection reset by peer")

        async def swarm(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/nodes":
                return httpx.Response(200, json={"nodes": [r.model_dump() for r in records]})
            sent.append(json.loads(request.content))
            headers = {"content-type": "application/json"}
            answer = await http.post(request.url.path, content=request.content, headers=headers)
            events = {"content-type": "text/event-stream"}
            if request.url.host == "a.test":
                head = b"".join(sse_events(answer)[: cut + 1])
                return httpx.Response(200, content=broken(head), headers=events)
            return httpx.Response(200, content=answer.content, headers=events)

        finish = next(i for i, e in enumerate(whole) if b'"finished":true' in e)
        for cut in range(finish):
            sent.clear()
            transport = httpx.MockTransport(swarm)
            async with LlamaNetClient(nodes=["http://a.test"], transport=transport) as client:
                chunks = [c async for c in client.generate_stream("Hi", max_tokens=max_tokens)]
            assert len(sent) == 2, (case, cut, sent)  # a, then the resumption on b
            resumed = sent[1]["llamanet"]["resume"]
            where = (case, cut, resumed["deltas"], resumed["token_ids"])
            assert resumed["deltas"] == sum(TOKEN_IDS_FIELD.encode() in e for e in whole[: cut + 1])
            assert "".join(c.text for c in chunks) == reference["content"], where
            assert [c.finish_reason for c in chunks if c.finished] == reference["finishes"], where
            assert [c.index for c in chunks] == list(range(len(chunks))), where


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
