"""One real node (real model, real HTTP) driven by the official `openai` SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from llamanet.node.node import GENERATION_CAPABILITIES

pytestmark = pytest.mark.model

CHAT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def node(start_node: Any) -> Any:
    return start_node("--n-ctx", "512", "--model-id", "smol")


@pytest.fixture(scope="module")
def sdk(node: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture
def async_sdk(node: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


# ------------------------------------------------------------------ the OpenAI API, via the SDK


def test_models_lists_the_served_model(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list().data] == ["smol"]


def test_chat_non_streaming_has_usage(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="smol", messages=CHAT, max_tokens=12, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_wire_format(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="smol",
        messages=CHAT,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_streamed_text_equals_non_streamed_at_temperature_zero(sdk: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": "smol", "messages": CHAT, "max_tokens": 20, "temperature": 0}
    full = sdk.chat.completions.create(**args).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in sdk.chat.completions.create(stream=True, **args)
        if c.choices
    )
    assert streamed == full


def test_completions_both_ways(sdk: openai.OpenAI) -> None:
    done = sdk.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert done.choices[0].text and done.usage.completion_tokens <= 8
    parts = list(
        sdk.completions.create(
            model="smol", prompt="One, two, three,", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts)
    assert parts[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_sequence_cuts_the_answer(sdk: openai.OpenAI) -> None:
    prompt = "Count: 1, 2, 3, 4, 5, 6, 7"
    free = sdk.completions.create(model="smol", prompt=prompt, max_tokens=12, temperature=0)
    assert "," in free.choices[0].text  # the model continues the list
    cut = sdk.completions.create(
        model="smol", prompt=prompt, max_tokens=12, temperature=0, stop=[","]
    )
    assert "," not in cut.choices[0].text
    assert cut.choices[0].finish_reason == "stop"
    assert free.choices[0].text.startswith(cut.choices[0].text)


def test_context_overflow_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="smol", messages=CHAT, max_tokens=600)
    assert err.value.code == "context_length_exceeded"
    long_prompt = "word " * 700
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model="smol", prompt=long_prompt, max_tokens=1)


def test_unknown_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="gpt-17", messages=CHAT, max_tokens=4)
    assert err.value.code == "model_not_found"
    assert "smol" in str(err.value)


async def test_async_sdk_streams(async_sdk: openai.AsyncOpenAI) -> None:
    stream = await async_sdk.chat.completions.create(
        model="smol", messages=CHAT, max_tokens=8, stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces)
    reply = await async_sdk.completions.create(model="smol", prompt="Hi", max_tokens=4)
    assert reply.usage.completion_tokens <= 4


async def test_four_concurrent_streams_all_finish(async_sdk: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        stream = await async_sdk.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": f"Say a word about {i}."}],
            max_tokens=24,
            stream=True,
        )
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(text and finish in ("stop", "length") for text, finish in results)


# ------------------------------------------------------------------ native endpoints


def test_native_generate_and_stream(node: Any) -> None:
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
    res = httpx.post(node.url + "/generate", json=body, timeout=60)
    data = res.json()
    assert res.status_code == 200 and data["node_id"] == res.headers["x-llamanet-node"]
    assert data["tokens_generated"] == data["usage"]["completion_tokens"] <= 8
    events = []
    with httpx.stream("POST", node.url + "/generate/stream", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["finished"] and chunks[-1]["usage"]["completion_tokens"] <= 8
    assert "".join(c["text"] for c in chunks) == data["text"]  # temperature 0: same answer
    assert [c["index"] for c in chunks] == list(range(len(chunks)))


def test_status_info_health(node: Any) -> None:
    status, info = node.get("/status").json(), node.get("/info").json()
    assert status["node_id"] == info["node_id"]
    assert status["requests_completed"] > 0 and status["tokens_per_second"] > 0
    model = info["models"][0]
    assert isinstance(model["fingerprint"], str) and model["fingerprint"]  # for resumption
    assert model["runtime"].startswith("llama-cpp-python ")
    assert info["models"] == [
        {
            "id": "smol",
            "n_ctx": 512,
            "quantization": "Q4_1",
            "capabilities": [*GENERATION_CAPABILITIES, "embeddings"],
            "fingerprint": model["fingerprint"],
            "runtime": model["runtime"],
        }
    ]
    assert node.get("/health").status_code == 200


# ------------------------------------------------------------------ bad input


def _post(node: Any, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(node.url + path, timeout=30, **kw)


def _assert_error(res: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"messages": CHAT, "temperature": 5}, "temperature"),
        ({"messages": CHAT, "top_p": 0}, "top_p"),
        ({"messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ({"messages": CHAT, "max_tokens": -3}, "max_tokens"),
        ({"messages": CHAT, "max_tokens": "many"}, "max_tokens"),
        ({"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": CHAT, "n": 9}, "n"),  # above protocol.MAX_N
        ({}, "messages"),
    ],
)
def test_bad_chat_bodies_are_400(node: Any, body: dict[str, Any], param: str) -> None:
    err = _assert_error(_post(node, "/v1/chat/completions", json=body), 400)
    assert err["param"] == param


def test_malformed_json_is_400(node: Any) -> None:
    for raw in (b"{not json", b'{"messages": [', b""):
        res = _post(
            node, "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        _assert_error(res, 400)


def test_body_over_limit_is_413(node: Any) -> None:
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    _assert_error(
        _post(
            node, "/v1/chat/completions", content=huge, headers={"content-type": "application/json"}
        ),
        413,
    )


def test_native_needs_prompt_or_messages(node: Any) -> None:
    _assert_error(_post(node, "/generate", json={"max_tokens": 4}), 400)
    _assert_error(_post(node, "/generate", json={"prompt": "a", "messages": CHAT}), 400)


def test_unknown_route_is_openai_shaped_404(node: Any) -> None:
    _assert_error(httpx.get(node.url + "/v1/nothing", timeout=10), 404)


def test_node_still_serves_after_bad_input(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="smol", messages=CHAT, max_tokens=4)
    assert reply.choices[0].message.content


def test_wrong_content_type_is_415(node: Any) -> None:
    res = _post(
        node,
        "/v1/chat/completions",
        content=json.dumps({"messages": CHAT}),
        headers={"content-type": "text/plain"},
    )
    _assert_error(res, 415)


def test_chunked_body_over_limit_is_413(node: Any) -> None:
    def chunks() -> Any:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    res = _post(
        node, "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_error(res, 413)
