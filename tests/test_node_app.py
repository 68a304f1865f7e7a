"""The node's HTTP app in process (fast tier): a `FakeEngine`, no model, no DHT, no sockets.

Real FastAPI app, real middleware and error handlers, driven through `httpx.ASGITransport`:
the OpenAI and native response shapes (JSON and SSE), errors and their statuses, the node
header, the counters and the metrics. Behaviour of the real model is tested elsewhere
(`tests/test_node_api.py`, marked `model`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, serving

from llamanet.node import node as node_module
from llamanet.node.app import create_app
from llamanet.node.config import NodeSettings
from llamanet.node.errors import model_not_found
from llamanet.node.metrics import Metrics
from llamanet.node.node import GENERATION_CAPABILITIES, LlamaNetNode
from llamanet.protocol import (
    NODE_HEADER,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    GenerateResponse,
    NodeStatus,
    StreamingChunk,
)

CHAT = [{"role": "user", "content": "Say hi."}]
TEXT = "Hello, world!"  # the FakeEngine's default script, joined


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(home=tmp_path, request_timeout=30, max_body_size=64 * 1024)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def http(settings: NodeSettings, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings, engine) as client:
        yield client


def events(res: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    assert res.headers["content-type"].startswith("text/event-stream"), res.text
    return [line[6:] for line in res.text.splitlines() if line.startswith("data: ")]


def assert_error(
    res: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The status, and exactly the OpenAI error shape."""
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json")
    body = res.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = ErrorResponse.model_validate(body).error
    assert err.message and err.type
    if code is not None:
        assert err.code == code, body
    if param is not None:
        assert err.param == param, body
    return body["error"]


# ------------------------------------------------------------------ OpenAI chat


async def test_chat_completion_json(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    res = await http.post("/v1/chat/completions", json={"messages": CHAT})
    assert res.status_code == 200, res.text
    reply = ChatCompletion.model_validate(res.json())
    assert reply.id.startswith("chatcmpl-") and reply.model == engine.model_id
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(engine.pieces)
    assert reply.usage.prompt_tokens == len(engine.submitted[0][0])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_chat_stream_shape_and_done(http: httpx.AsyncClient) -> None:
    res = await http.post("/v1/chat/completions", json={"messages": CHAT, "stream": True})
    assert res.status_code == 200
    assert res.headers["cache-control"] == "no-cache"
    data = events(res)
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in data[:-1]]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


async def test_chat_stream_include_usage(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = {"messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    data = events(await http.post("/v1/chat/completions", json=body))
    assert data[-1] == "[DONE]"
    last = ChatCompletionChunk.model_validate_json(data[-2])
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len(engine.pieces)
    before = ChatCompletionChunk.model_validate_json(data[-3])
    assert before.choices[0].finish_reason == "stop"


async def test_always_streaming_chat_route(http: httpx.AsyncClient) -> None:
    data = events(await http.post("/v1/chat/completions/stream", json={"messages": CHAT}))
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in data[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT


async def test_max_tokens_cuts_with_length(http: httpx.AsyncClient) -> None:
    res = await http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
    reply = ChatCompletion.model_validate(res.json())
    assert reply.choices[0].message.content == "Hello,"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 2


async def test_sampling_fields_reach_the_engine(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = {
        "messages": CHAT,
        "max_tokens": 50,
        "max_completion_tokens": 3,  # wins over max_tokens
        "temperature": 0.2,
        "top_p": 0.5,
        "top_k": 7,
        "min_p": 0.1,
        "repeat_penalty": 1.3,
        "presence_penalty": 0.4,
        "frequency_penalty": -0.4,
        "seed": 11,
        "stop": "END",
    }
    assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
    params = engine.submitted[-1][1]
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (3, 0.2, 0.5, 7)
    assert (params.min_p, params.repeat_penalty, params.seed) == (0.1, 1.3, 11)
    assert (params.presence_penalty, params.frequency_penalty) == (0.4, -0.4)
    assert params.stop == ("END",)


async def test_chat_prompt_is_rendered_from_every_message(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "parts"}],
        },
    ]
    assert (await http.post("/v1/chat/completions", json={"messages": messages})).status_code == 200
    expected = await engine.tokenize(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "twoparts"},
        ]
    )
    assert engine.submitted[-1][0] == expected


# ------------------------------------------------------------------ OpenAI completions, models


async def test_completion_json_and_echo(http: httpx.AsyncClient) -> None:
    res = await http.post("/v1/completions", json={"prompt": "Once upon"})
    reply = Completion.model_validate(res.json())
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert reply.choices[0].text == TEXT and reply.choices[0].finish_reason == "stop"
    echoed = await http.post("/v1/completions", json={"prompt": "Once upon", "echo": True})
    assert echoed.json()["choices"][0]["text"] == "Once upon" + TEXT


async def test_completion_default_budget_is_16(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    await http.post("/v1/completions", json={"prompt": "x"})
    assert engine.submitted[-1][1].max_tokens == 16  # the OpenAI default of legacy completions


async def test_completion_stream_with_usage(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = {"prompt": ["Once"], "stream": True, "stream_options": {"include_usage": True}}
    data = events(await http.post("/v1/completions", json=body))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == TEXT
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(engine.pieces)


async def test_models_lists_the_local_model(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    for path in ("/v1/models", "/v1/models?local=1"):
        data = (await http.get(path)).json()
        assert data["object"] == "list"
        assert [(m["id"], m["n_ctx"]) for m in data["data"]] == [(engine.model_id, engine.n_ctx)]


async def test_model_names_that_mean_this_node(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    for model in (engine.model_id, "llamanet", "", None):
        body: dict[str, Any] = {"messages": CHAT, "model": model}
        res = await http.post("/v1/chat/completions", json=body)
        assert res.status_code == 200, (model, res.text)


# ------------------------------------------------------------------ native routes


async def test_native_generate(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    res = await http.post("/generate", json={"prompt": "Hello", "max_tokens": 3})
    reply = GenerateResponse.model_validate(res.json())
    assert reply.node_id == res.headers[NODE_HEADER]
    assert reply.text == "Hello, world" and reply.finish_reason == "length"
    assert reply.tokens_generated == reply.usage.completion_tokens == 3
    assert reply.model == engine.model_id and reply.tokens_per_second == 42.0


async def test_native_stream(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    res = await http.post("/generate/stream", json={"messages": CHAT})
    data = events(res)
    assert data[-1] == "[DONE]"
    chunks = [StreamingChunk.model_validate_json(d) for d in data[:-1]]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.node_id == res.headers[NODE_HEADER] for c in chunks)
    assert "".join(c.text for c in chunks) == TEXT
    assert [c.finished for c in chunks] == [False] * len(engine.pieces) + [True]
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage is not None
    assert last.usage.completion_tokens == len(engine.pieces)


async def test_native_needs_prompt_xor_messages(http: httpx.AsyncClient) -> None:
    assert_error(await http.post("/generate", json={"max_tokens": 2}), 400, "invalid_value")
    both = {"prompt": "a", "messages": CHAT}
    assert_error(await http.post("/generate/stream", json=both), 400, "invalid_value")


async def test_info_health_dht_status(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    info = (await http.get("/info")).json()
    assert info["models"] == [
        {
            "id": engine.model_id,
            "n_ctx": engine.n_ctx,
            "quantization": "Q4_0",
            "capabilities": [*GENERATION_CAPABILITIES],
            "fingerprint": None,  # an engine handed in is never hashed: no resumption
            "runtime": None,
        }
    ]
    assert info["model_path"] == str(engine.model_path)
    assert info["metadata"] == engine.metadata
    health = await http.get("/health")
    assert health.status_code == 200 and health.json()["node_id"] == info["node_id"]
    dht = (await http.get("/dht/status")).json()
    assert dht == {"node_id": info["node_id"], "enabled": False}


async def test_nodes_lists_this_node(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    node_id = (await http.get("/info")).json()["node_id"]
    listed = (await http.get("/nodes")).json()["nodes"]
    assert [r["node_id"] for r in listed] == [node_id]
    assert [m["id"] for m in listed[0]["models"]] == [engine.model_id]
    by_model = (await http.get(f"/nodes?model={engine.model_id}")).json()["nodes"]
    assert [r["node_id"] for r in by_model] == [node_id]
    assert (await http.get("/nodes?model=other")).json()["nodes"] == []
    one = await http.get(f"/nodes/{node_id}")
    assert one.status_code == 200 and one.json()["node_id"] == node_id
    assert_error(await http.get("/nodes/" + "0" * 40), 404, "node_not_found", "node_id")


# ------------------------------------------------------------------ errors and statuses


async def test_validation_error_is_400_never_422(http: httpx.AsyncClient) -> None:
    res = await http.post("/v1/chat/completions", json={"messages": CHAT, "temperature": 9})
    assert_error(res, 400, "invalid_value", "temperature")
    assert_error(
        await http.post("/v1/chat/completions", json={}), 400, "missing_required_parameter"
    )


async def test_unknown_model_is_404_naming_what_is_served(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    for path, body in (
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/v1/chat/completions/stream", {"messages": CHAT}),
        ("/v1/completions", {"prompt": "x"}),
        ("/generate", {"prompt": "x"}),
        ("/generate/stream", {"prompt": "x"}),
    ):
        err = assert_error(
            await http.post(path, json={**body, "model": "gpt-17"}), 404, "model_not_found", "model"
        )
        assert engine.model_id in err["message"] and "gpt-17" in err["message"]
    assert engine.submitted == []


async def test_context_overflow_is_400_before_any_stream(http: httpx.AsyncClient) -> None:
    long = " ".join(["word"] * 1100)  # 1101 fake tokens > n_ctx 1024
    body = {"messages": [{"role": "user", "content": long}], "stream": True}
    assert_error(await http.post("/v1/chat/completions", json=body), 400, "context_length_exceeded")
    budget = {"prompt": "short", "max_tokens": 1024}
    assert_error(await http.post("/v1/completions", json=budget), 400, "context_length_exceeded")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nothing"),
        ("POST", "/v1/responses/x/cancel"),
        ("POST", "/nothing/at/all"),
        ("PUT", "/v1/nothing"),
        ("DELETE", "/x"),
        ("POST", "/"),
    ],
)
async def test_unknown_route_is_404_not_found(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    res = await http.request(method, path, json={"input": "x"})
    err = assert_error(res, 404, "not_found")
    assert err["type"] == "not_found_error"
    assert "allow" not in res.headers


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/generate", "POST"),
        ("PUT", "/generate/stream", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/status", "GET"),
        ("POST", "/nodes/abc", "GET"),
    ],
)
async def test_wrong_method_on_a_known_path_is_405_with_allow(
    http: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    res = await http.request(method, path)
    assert_error(res, 405, "method_not_allowed")
    assert res.headers["allow"] == allow


async def test_body_over_the_limit_is_413(http: httpx.AsyncClient, settings: NodeSettings) -> None:
    huge = {"messages": [{"role": "user", "content": "x" * settings.max_body_size}]}
    assert_error(await http.post("/v1/chat/completions", json=huge), 413, "request_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(3):
            yield b"y" * settings.max_body_size
        yield b'"}'

    res = await http.post(
        "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(res, 413)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_json_is_415(http: httpx.AsyncClient, ctype: str) -> None:
    res = await http.post(
        "/v1/chat/completions",
        content=json.dumps({"messages": CHAT}),
        headers={"content-type": ctype},
    )
    assert_error(res, 415, "unsupported_media_type")


async def test_a_json_body_without_content_type_is_read_as_json(http: httpx.AsyncClient) -> None:
    res = await http.post("/v1/completions", content=json.dumps({"prompt": "hi"}).encode())
    assert res.status_code == 200, res.text


async def test_queue_full_is_503_with_retry_after(settings: NodeSettings) -> None:
    engine = FakeEngine(queue_full=True, retry_after_s=7)
    async with serving(settings, engine) as http:
        for path, body in (
            ("/v1/chat/completions", {"messages": CHAT}),
            ("/v1/chat/completions", {"messages": CHAT, "stream": True}),
            ("/generate/stream", {"prompt": "x"}),
        ):
            res = await http.post(path, json=body)
            assert_error(res, 503, "queue_full")
            assert res.headers["retry-after"] == "7"
        assert (await http.get("/status")).json()["requests_rejected"] == 3


async def test_a_busy_slot_fills_the_queue(settings: NodeSettings) -> None:
    """One request holds the only slot (queue size 0): the next is refused at once with 503."""
    engine = FakeEngine(queue_size=0, hold=asyncio.Event())
    async with serving(settings, engine) as http:
        first = asyncio.create_task(
            http.post("/v1/chat/completions", json={"messages": CHAT, "stream": True})
        )
        await engine.started.wait()
        status = NodeStatus.model_validate((await http.get("/status")).json())
        assert (status.active, status.queued, status.capacity, status.load) == (1, 0, 1, 1.0)
        busy = await http.post("/v1/chat/completions", json={"messages": CHAT})
        assert_error(busy, 503, "queue_full")
        assert busy.headers["retry-after"] == str(engine.retry_after_s)
        assert engine.hold is not None
        engine.hold.set()
        done = await first
        assert events(done)[-1] == "[DONE]"
        status = NodeStatus.model_validate((await http.get("/status")).json())
        assert (status.active, status.requests_completed, status.requests_rejected) == (0, 1, 1)


async def test_an_error_inside_a_stream_is_one_error_event_then_the_end(
    settings: NodeSettings,
) -> None:
    engine = FakeEngine(fail_after=2)
    async with serving(settings, engine) as http:
        for path, body in (
            ("/v1/chat/completions", {"messages": CHAT, "stream": True}),
            ("/v1/completions", {"prompt": "x", "stream": True}),
            ("/generate/stream", {"prompt": "x"}),
        ):
            res = await http.post(path, json=body)
            assert res.status_code == 200  # the stream had started
            data = events(res)
            assert "[DONE]" not in data
            error = ErrorResponse.model_validate_json(data[-1]).error
            assert error.code == "generation_failed" and error.type == "server_error"
            assert all("error" not in json.loads(d) for d in data[:-1])
            text = "".join(
                c.get("text")
                or (c.get("choices") or [{}])[0].get("text")
                or (c.get("choices") or [{}])[0].get("delta", {}).get("content")
                or ""
                for c in map(json.loads, data[:-1])
            )
            assert text == "Hello,"  # the two pieces before the failure
        status = (await http.get("/status")).json()
        assert status["requests_failed"] == 3 and status["active"] == 0


async def test_a_failure_before_the_response_is_500(settings: NodeSettings) -> None:
    async with serving(settings, FakeEngine(fail_after=0)) as http:
        res = await http.post("/v1/chat/completions", json={"messages": CHAT})
        assert_error(res, 500, "generation_failed")


async def test_no_model_node_answers_404_for_generation(settings: NodeSettings) -> None:
    settings.no_model = True
    async with serving(settings) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/v1/models")).json()["data"] == []
        err = assert_error(
            await http.post("/v1/chat/completions", json={"messages": CHAT}), 404, "model_not_found"
        )
        assert "none" in err["message"]


async def test_a_model_that_fails_to_load_is_reported(
    settings: NodeSettings, tmp_path: Path
) -> None:
    settings.model = tmp_path / "missing.gguf"  # loading fails at once, without llama.cpp
    async with serving(settings) as http:
        for _ in range(500):
            health = await http.get("/health")
            if health.json()["error"]["code"] != "model_loading":
                break
            assert health.headers["retry-after"] == "2"
            await asyncio.sleep(0.01)
        err = assert_error(health, 503, "model_load_failed")
        assert "missing.gguf" in err["message"]
        chat = await http.post("/v1/chat/completions", json={"messages": CHAT})
        assert_error(chat, 404, "model_not_found")


class _NoPeerGateway:
    """A gateway whose swarm serves nothing: every forward is a 404."""

    def peers(self) -> list[Any]:
        return []

    async def forward(self, request: Any, model: str | None, **_: Any) -> Any:
        raise model_not_found(model or "llamanet", [])


async def test_a_node_loading_its_model_answers_503_not_404(
    settings: NodeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that reaches a node before its model is loaded gets a 503 with Retry-After
    (OpenAI clients retry it), also when the swarm has no peer for it; another model is 404."""
    never = asyncio.Event()

    async def slow_load(*args: Any, **kwargs: Any) -> Any:
        await never.wait()

    monkeypatch.setattr(node_module.LlamaEngine, "load", slow_load)
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    settings.model = tmp_path / "tiny.gguf"
    settings.model_id = "tiny"
    node = LlamaNetNode(settings, dht=False)
    app = create_app(node)
    async with app.router.lifespan_context(app):
        node.gateway = _NoPeerGateway()  # type: ignore[assignment]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as http:
            assert node.loading
            for model in (None, "llamanet", "tiny"):
                body: dict[str, Any] = {"messages": CHAT, "stream": True}
                if model is not None:
                    body["model"] = model
                res = await http.post("/v1/chat/completions", json=body)
                assert_error(res, 503, "model_loading")
                assert res.headers["retry-after"] == "2"
            res = await http.post("/v1/embeddings", json={"input": "x", "model": "tiny"})
            assert_error(res, 503, "model_loading")
            other = await http.post(
                "/v1/chat/completions", json={"messages": CHAT, "model": "other"}
            )
            assert_error(other, 404, "model_not_found")
        node.gateway = None
        never.set()


# ------------------------------------------------------------------ header, counters, metrics


async def test_every_response_names_the_node(http: httpx.AsyncClient) -> None:
    node_id = (await http.get("/info")).json()["node_id"]
    responses = [
        await http.post("/v1/chat/completions", json={"messages": CHAT}),
        await http.post("/v1/chat/completions", json={"messages": CHAT, "stream": True}),
        await http.post("/generate", json={"prompt": "x"}),
        await http.post("/v1/chat/completions", json={}),
        await http.post(
            "/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"}
        ),
        await http.post("/v1/embeddings", json={}),
        await http.post("/generate", content=b"x" * 70_000),  # 413
        await http.get("/generate"),
        await http.get("/metrics"),
        await http.get("/health"),
        await http.get("/"),
        await http.get("/openapi.json"),
    ]
    for res in responses:
        assert res.headers[NODE_HEADER] == node_id, (res.request.url, res.status_code)


async def test_status_counts_requests_and_tokens(
    http: httpx.AsyncClient, engine: FakeEngine
) -> None:
    before = NodeStatus.model_validate((await http.get("/status")).json())
    assert before.requests_total == 0 and before.models == [engine.model_id]
    await http.post("/v1/chat/completions", json={"messages": CHAT})
    await http.post("/generate/stream", json={"prompt": "x", "max_tokens": 2})
    status = NodeStatus.model_validate((await http.get("/status")).json())
    assert status.requests_total == status.requests_completed == 2
    assert status.tokens_generated == len(engine.pieces) + 2
    assert (status.active, status.queued, status.requests_failed) == (0, 0, 0)
    assert status.capacity == engine.capacity and status.queue_size == engine.queue_size
    assert status.requests_forwarded == 0


async def test_metrics_render(http: httpx.AsyncClient, engine: FakeEngine) -> None:
    await http.post("/v1/chat/completions", json={"messages": CHAT})
    await http.post("/v1/nothing", json={})
    res = await http.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    text = res.text
    assert 'llamanet_http_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'llamanet_http_requests_total{endpoint="other",status="404"} 1.0' in text  # bounded
    assert f"llamanet_tokens_generated_total {float(len(engine.pieces))}" in text
    assert 'llamanet_generations_total{outcome="completed"} 1.0' in text
    assert "llamanet_dht_peers 0.0" in text
    assert "llamanet_time_to_first_token_seconds_count 1.0" in text


def test_metrics_read_the_callables_they_are_given() -> None:
    calls: list[str] = []

    def status() -> NodeStatus:
        calls.append("status")
        counts: dict[str, Any] = dict.fromkeys(NodeStatus.model_fields, 0)
        counts.update(node_id="n", models=[], tokens_generated=5, queued=2, requests_forwarded=3)
        return NodeStatus.model_validate(counts)

    def dht_status() -> dict[str, Any]:
        calls.append("dht")
        return {"routing_table_size": 4}

    text = Metrics(status=status, dht_status=dht_status).render().decode()
    assert calls == ["status", "dht"]  # read at scrape time
    for line in (
        "llamanet_tokens_generated_total 5.0",
        "llamanet_queue_depth 2.0",
        "llamanet_requests_forwarded_total 3.0",
        "llamanet_dht_peers 4.0",
    ):
        assert line in text


# ------------------------------------------------------------------ the web UI and the schema


async def test_web_ui_is_served_at_the_root(http: httpx.AsyncClient) -> None:
    res = await http.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert "<html" in res.text.lower()
    assert (await http.get("/app.js")).status_code == 200


async def test_openapi_documents_every_route(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert set(spec["paths"]) == {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/chat/completions/stream",
        "/v1/completions",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/embeddings",
        "/generate",
        "/generate/stream",
        "/status",
        "/info",
        "/health",
        "/nodes",
        "/nodes/{node_id}",
        "/dht/status",
        "/metrics",
    }
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in chat["responses"] and "400" in chat["responses"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
