"""Completions, the Responses API, the native API and `LlamaNetClient` honour the answer-shaping
fields (fast tier, `FakeEngine`, the official SDK on httpx's ASGI transport)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from fakes import FakeEngine
from openai.types import Completion
from openai.types.responses import Response as SDKResponse
from wiring import USER, WEATHER, error_of, events, node, pieces

from llamanet.client import LlamaNetClient
from llamanet.node.app import create_app
from llamanet.node.config import NodeSettings
from llamanet.node.node import GENERATION_CAPABILITIES, LlamaNetNode
from llamanet.node.routes._serving import needed_capability
from llamanet.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateResponse,
    StreamingChunk,
    StreamingRequest,
)

CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
RESPONSES_TOOL = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]


# --------------------------------------------------------------------------- completions


async def test_completion_logprobs_echo_and_n(tmp_path: Path) -> None:
    engine = FakeEngine(variants=[("A", "b"), ("C",)])
    async with node(tmp_path, engine) as n:
        done = await n.sdk.completions.create(
            model="fake-model", prompt="Say", n=2, logprobs=2, echo=False, logit_bias={"5": 1}
        )
        Completion.model_validate(done.model_dump())
        assert [(c.index, c.text) for c in done.choices] == [(0, "Ab"), (1, "C")]
        logprobs = done.choices[0].logprobs
        assert logprobs is not None and logprobs.tokens == ["A", "b"]
        assert logprobs.text_offset == [0, 1] and logprobs.top_logprobs[0] == {  # type: ignore[index]
            "alt0": -1.0,
            "alt1": -2.0,
        }
        assert n.params.logprobs == 2 and n.params.logit_bias == ((5, 1.0),)
        assert done.usage is not None and done.usage.completion_tokens == 3


async def test_completion_echo_whole_and_streamed(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        done = await n.sdk.completions.create(model="fake-model", prompt="Say", echo=True)
        assert done.choices[0].text == "SayHello, world!"
        body = {"prompt": "Say", "echo": True, "stream": True, "logprobs": 0}
        res = await n.http.post("/v1/completions", json=body)
        assert error_of(res)["message"].count("echo with logprobs") == 1
        raw = events(await n.http.post("/v1/completions", json={**body, "logprobs": None}))
        assert "".join(c["choices"][0]["text"] for c in raw[:-1]) == "SayHello, world!"
        assert raw[0]["choices"][0]["text"] == "Say"


async def test_streamed_completion_logprobs_offsets_run_through_the_text(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        raw = events(
            await n.http.post(
                "/v1/completions", json={"prompt": "Say", "stream": True, "logprobs": 1}
            )
        )
        offsets = [c["choices"][0]["logprobs"]["text_offset"] for c in raw[:-2]]
        assert offsets == [[0], [5], [6], [12]]


async def test_suffix_is_a_400(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        res = await n.http.post("/v1/completions", json={"prompt": "a", "suffix": "b"})
        assert "suffix" in error_of(res)["message"]


# --------------------------------------------------------------------------- responses


async def test_responses_create_output_text_and_previous_response_id(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces("Bonjour!"))) as n:
        first = await n.sdk.responses.create(
            model="fake-model", input="Hello", instructions="Answer in French."
        )
        SDKResponse.model_validate(first.model_dump())
        assert first.output_text == "Bonjour!" and first.status == "completed"
        assert "Answer in French." in n.prompt
        second = await n.sdk.responses.create(
            model="fake-model", input="And again?", previous_response_id=first.id
        )
        assert second.previous_response_id == first.id
        assert "Hello" in n.prompt and "Bonjour!" in n.prompt and "And again?" in n.prompt
        assert "Answer in French." not in n.prompt  # instructions are not carried over
        got = await n.sdk.responses.retrieve(first.id)
        assert got.output_text == "Bonjour!"
        res = await n.http.post(
            "/v1/responses", json={"input": "x", "previous_response_id": "resp_nope"}
        )
        assert error_of(res)["code"] == "previous_response_not_found"
        assert error_of(await n.http.get("/v1/responses/resp_nope"), 404)["code"] == "not_found"


async def test_store_false_keeps_nothing(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        done = await n.sdk.responses.create(model="fake-model", input="Hi", store=False)
        assert (await n.http.get(f"/v1/responses/{done.id}")).status_code == 404


async def test_responses_function_tools_whole_and_streamed(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces(CALL))) as n:
        done = await n.sdk.responses.create(
            model="fake-model",
            input="Weather in Paris?",
            tools=[RESPONSES_TOOL],  # type: ignore[list-item]
            tool_choice="required",
        )
        calls = [item for item in done.output if item.type == "function_call"]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [  # type: ignore[union-attr]
            ("get_weather", {"city": "Paris"})
        ]
        assert n.params.grammar is not None and "tool_calls" in n.params.grammar
        async with n.sdk.responses.stream(
            model="fake-model",
            input="Weather in Paris?",
            tools=[RESPONSES_TOOL],  # type: ignore[list-item]
            tool_choice="required",
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
        streamed = [item for item in final.output if item.type == "function_call"]
        assert json.loads(streamed[0].arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        # the call is stored: answering it continues the conversation
        follow = await n.sdk.responses.create(
            model="fake-model",
            previous_response_id=final.id,
            input=[
                {
                    "type": "function_call_output",
                    "call_id": streamed[0].call_id,  # type: ignore[union-attr]
                    "output": "sunny",
                }
            ],
            tools=[RESPONSES_TOOL],  # type: ignore[list-item]
            tool_choice="none",
        )
        assert follow.status == "completed" and '"tool_response"' in n.prompt


async def test_responses_text_stream_and_text_format(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces('{"a": 1}'))) as n:
        stream = await n.sdk.responses.create(
            model="fake-model",
            input="JSON please",
            stream=True,
            text={"format": {"type": "json_object"}},
        )
        kinds, deltas = [], []
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        assert "".join(deltas) == '{"a": 1}'
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] == "response.completed" and "response.output_text.done" in kinds
        assert n.params.grammar is not None


async def test_responses_max_tool_calls_and_truncation(tmp_path: Path) -> None:
    two = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_weather", "arguments": {"city": "Rome"}}]}'
    )
    async with node(tmp_path, FakeEngine(pieces=pieces(two))) as n:
        body: dict[str, Any] = {
            "input": "Weather?",
            "tools": [RESPONSES_TOOL],
            "tool_choice": "required",
            "max_tool_calls": 1,
        }
        done = (await n.http.post("/v1/responses", json=body)).json()
        assert [item["type"] for item in done["output"]] == ["function_call"]
        assert "exactly one call" in n.prompt
        res = await n.http.post("/v1/responses", json={"input": "x", "truncation": "auto"})
        assert "truncation" in error_of(res)["message"]


async def test_a_named_function_is_one_call_unless_parallel_calls_are_asked_for(
    tmp_path: Path,
) -> None:
    named = {"type": "function", "name": "get_weather"}
    async with node(tmp_path, FakeEngine(pieces=pieces(CALL))) as n:
        body = {"input": "Weather?", "tools": [RESPONSES_TOOL], "tool_choice": named}
        assert (await n.http.post("/v1/responses", json=body)).status_code == 200
        assert "exactly one call" in n.prompt
        body["parallel_tool_calls"] = True
        assert (await n.http.post("/v1/responses", json=body)).status_code == 200
        assert "one or more calls" in n.prompt


# --------------------------------------------------------------------------- native API


async def test_native_generate_honours_the_chat_fields(tmp_path: Path) -> None:
    engine = FakeEngine(pieces=pieces(CALL), variants=[pieces(CALL), pieces('{"response": "no"}')])
    async with node(tmp_path, engine) as n:
        body = {"messages": USER, "tools": [WEATHER], "n": 2, "logprobs": True}
        res = GenerateResponse.model_validate((await n.http.post("/generate", json=body)).json())
        assert res.finish_reason == "tool_calls" and res.text == ""
        assert res.tool_calls is not None and res.tool_calls[0].function.name == "get_weather"
        assert res.choices is not None and [c.text for c in res.choices] == ["", "no"]
        assert res.choices[1].finish_reason == "stop" and res.logprobs
        assert res.usage.completion_tokens == sum(c.tokens_generated for c in res.choices)
        res2 = await n.http.post(
            "/generate", json={"prompt": "x", "response_format": {"type": "json_object"}}
        )
        assert res2.status_code == 200 and n.params.grammar is not None
        err = error_of(await n.http.post("/generate", json={"prompt": "x", "tools": [WEATHER]}))
        assert "messages" in err["message"]


async def test_native_stream_carries_tool_call_deltas_choices_and_logprobs(tmp_path: Path) -> None:
    engine = FakeEngine(variants=[pieces(CALL), ("A",)])
    async with node(tmp_path, engine) as n:
        body = {
            "messages": USER,
            "tools": [WEATHER],
            "tool_choice": "required",
            "n": 2,
            "logprobs": True,
        }
        raw = events(await n.http.post("/generate/stream", json=body))
        chunks = [StreamingChunk.model_validate(c) for c in raw[:-1]]
        assert [c.index for c in chunks] == list(range(len(chunks)))
        finished = {c.choice: c.finish_reason for c in chunks if c.finished}
        assert finished == {0: "tool_calls", 1: "stop"}
        args = "".join(
            d.function.arguments or ""
            for c in chunks
            if c.choice == 0
            for d in c.tool_calls or ()
            if d.function
        )
        assert json.loads(args) == {"city": "Paris"}
        assert any(c.logprobs for c in chunks)


# --------------------------------------------------------------------------- client


async def test_the_client_passes_the_fields_through(tmp_path: Path) -> None:
    """`LlamaNetClient` against the in-process node (ASGI transport): its native requests carry
    tools, response_format, logprobs and n, and the node honours them."""
    engine = FakeEngine(variants=[pieces(CALL), pieces(CALL)])
    llama_node = LlamaNetNode(NodeSettings(home=tmp_path), engine=engine, dht=False)
    app = create_app(llama_node)
    async with app.router.lifespan_context(app):
        async with LlamaNetClient(
            nodes=["http://node.test"], transport=httpx.ASGITransport(app=app)
        ) as client:
            result = await client.chat(
                USER,
                tools=[WEATHER],
                tool_choice="required",
                logprobs=True,
                top_logprobs=1,
                n=2,
                logit_bias={"3": 1.0},
            )
            assert result.finish_reason == "tool_calls" and result.tool_calls
            assert result.choices is not None and len(result.choices) == 2
            params = engine.submitted[-1][1]
            assert params.logprobs == 1 and params.logit_bias == ((3, 1.0),)
            assert params.grammar is not None and engine.submitted_n == [2]
            engine.variants = ()
            engine.pieces = pieces('{"a": 1}')
            chunks = [
                chunk
                async for chunk in client.chat_stream(
                    USER, response_format={"type": "json_object"}, max_tokens=50
                )
            ]
            assert json.loads("".join(c.text for c in chunks)) == {"a": 1}
            assert engine.submitted[-1][1].grammar is not None


# --------------------------------------------------------------------------- routing


def test_a_forwarded_request_needs_a_node_that_honours_it() -> None:
    """The capability a request asks the gateway for (`serve(..., capability=...)`)."""

    def chat(**fields: Any) -> str | None:
        return needed_capability(ChatCompletionRequest.model_validate({"messages": USER, **fields}))

    assert chat() is None and chat(response_format={"type": "text"}) is None
    assert chat(tools=[WEATHER], logprobs=True) == "tools"
    assert chat(response_format={"type": "json_object"}) == "json_schema"
    assert chat(logprobs=True) == "logprobs"
    completion = CompletionRequest.model_validate({"prompt": "x", "logprobs": 1})
    assert needed_capability(completion) == "logprobs"
    native = StreamingRequest.model_validate({"messages": USER, "tools": [WEATHER]})
    assert needed_capability(native) == "tools"
    assert {"tools", "json_schema", "logprobs", "responses"} <= set(GENERATION_CAPABILITIES)
