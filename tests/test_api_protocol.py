"""The OpenAI request/response models of issue 12, without the model: every bad input is a 400
in the OpenAI error shape through the node's own validation handler, and the response shapes
parse with the official `openai` SDK's types."""

from __future__ import annotations

from typing import Any

import openai.types.chat as sdk_chat
import openai.types.completion as sdk_completion
import openai.types.create_embedding_response as sdk_embedding
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llamanet.node.errors import install_error_handlers
from llamanet.protocol import (
    MAX_N,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ResponsesRequest,
    ToolCall,
    ToolCallDelta,
    ToolCallDeltaFunction,
    ToolCallFunction,
    Usage,
)

app = FastAPI()
install_error_handlers(app)


@app.post("/chat")
async def _chat(body: ChatCompletionRequest) -> dict[str, Any]:
    return {"ok": True, "mode": body.tool_choice_mode()}


@app.post("/completions")
async def _completions(body: CompletionRequest) -> dict[str, Any]:
    return {"ok": True}


@app.post("/embeddings")
async def _embeddings(body: EmbeddingRequest) -> dict[str, Any]:
    return {"ok": True, "inputs": body.inputs()}


@app.post("/responses")
async def _responses(body: ResponsesRequest) -> dict[str, Any]:
    return {"ok": True}


client = TestClient(app)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
ROUND_TRIP = [
    *USER,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def _error(path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error  # type: ignore[no-any-return]


def test_full_chat_request_is_accepted() -> None:
    body = {
        "messages": ROUND_TRIP,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "logprobs": True,
        "top_logprobs": 20,
        "n": MAX_N,
        "logit_bias": {"42": -100, "7": 5.5},
        "max_completion_tokens": 16,
        "seed": 3,
        "user": "u",
        "metadata": {"k": "v"},
        "modalities": ["text"],
        "store": False,  # unknown fields are ignored
    }
    response = client.post("/chat", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "get_weather"
    req = ChatCompletionRequest.model_validate(body)
    assert req.logit_bias == {"42": -100.0, "7": 5.5}
    assert req.response_format is not None and req.response_format.json_schema is not None
    assert req.response_format.json_schema.schema_ == {"type": "object"}
    assert req.response_format.json_schema.model_dump()["schema"] == {"type": "object"}


def test_tool_choice_defaults() -> None:
    assert ChatCompletionRequest.model_validate({"messages": USER}).tool_choice_mode() == "none"
    with_tools = ChatCompletionRequest.model_validate({"messages": USER, "tools": [WEATHER]})
    assert with_tools.tool_choice_mode() == "auto"


def test_refusal_parts_count_as_text() -> None:
    message = {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}
    req = ChatCompletionRequest.model_validate({"messages": [*USER, message]})
    assert req.messages[1].text() == "no"


BAD_CHAT = [
    ({"n": MAX_N + 1}, "n", "less than or equal to 8"),
    ({"top_logprobs": 3}, "top_logprobs", "requires logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
    (
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
        "'nope'",
    ),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": [WEATHER], "tool_choice": 5}, "tool_choice", "must be 'none'"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "two tools"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
        "tools.0.function.parameters",
        "not a valid JSON schema",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        "tools.0.function.parameters",
        "JSON schema object",
    ),
    (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ]
        },
        "tools.0.function.parameters",
        "type 'object'",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        "tools.0.function.name",
        "",
    ),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools.0", "only function tools"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"properties": {"a": {"type": "nope"}}}},
            }
        },
        "response_format.json_schema.schema",
        "not a valid JSON schema",
    ),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs 'json_schema'"),
    ({"response_format": {"type": "xml"}}, "response_format.type", ""),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"12": 101}}, "logit_bias", "-100 to 100"),
    ({"functions": [{"name": "f"}]}, "functions", "send 'tools'"),
    ({"audio": {"voice": "alloy"}}, "audio", "text only"),
    ({"modalities": ["text", "audio"]}, "modalities", "text only"),
]


@pytest.mark.parametrize(("extra", "param", "needle"), BAD_CHAT, ids=range(len(BAD_CHAT)))
def test_bad_chat_fields_are_400s(extra: dict[str, Any], param: str, needle: str) -> None:
    error = _error("/chat", {"messages": USER, **extra})
    assert error["param"] == param
    assert needle in error["message"]


BAD_MESSAGES = [
    ([*USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}], "messages", "call_9"),
    ([*USER, {"role": "tool", "content": "x"}], "messages.1", "tool_call_id"),
    ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "messages.0", "only an 'assistant'"),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
        "messages.0.content",
        "this model accepts text only",
    ),
    (
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": ""}}]}],
        "messages.0.content",
        "this model accepts text only",
    ),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages.0.content.0.text", ""),
    ([{"role": "user", "content": [{"type": "video"}]}], "messages.0.content", "'video'"),
]


@pytest.mark.parametrize(
    ("messages", "param", "needle"), BAD_MESSAGES, ids=range(len(BAD_MESSAGES))
)
def test_bad_messages_are_400s(messages: list[Any], param: str, needle: str) -> None:
    error = _error("/chat", {"messages": messages})
    assert error["param"] == param
    assert needle in error["message"]


def test_bad_completion_fields_are_400s() -> None:
    assert _error("/completions", {"prompt": "x", "logprobs": 6})["param"] == "logprobs"
    assert "echo" in _error("/completions", {"prompt": "x", "logprobs": 1, "echo": True})["message"]
    assert _error("/completions", {"prompt": "x", "n": 9})["param"] == "n"
    assert (
        client.post("/completions", json={"prompt": "x", "logprobs": 5, "n": 2}).status_code == 200
    )


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_embedding_inputs(value: Any, inputs: list[Any]) -> None:
    response = client.post("/embeddings", json={"input": value, "encoding_format": "base64"})
    assert response.status_code == 200, response.text
    assert response.json()["inputs"] == inputs


@pytest.mark.parametrize("value", ["", [], [""], [1, "a"], [[]], [-1], [True], {"a": 1}, None])
def test_bad_embedding_inputs(value: Any) -> None:
    assert _error("/embeddings", {"input": value})["param"] == "input"


def test_bad_embedding_fields() -> None:
    assert _error("/embeddings", {"input": "x", "encoding_format": "int8"})["param"] == (
        "encoding_format"
    )
    assert _error("/embeddings", {"input": "x", "dimensions": 0})["param"] == "dimensions"


BAD_RESPONSES = [
    ({"input": ""}, "input", "empty"),
    ({"input": []}, "input", ""),
    ({"input": [{"type": "reasoning"}]}, "input.0", "'reasoning'"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0", "'item_reference'"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input.0.content",
        "text only",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]},
        "input.0.content",
        "text only",
    ),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input.0", "'output'"),
    ({"input": [{"role": "user"}]}, "input.0", "'content'"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0", "only function tools"),
    (
        {
            "input": "x",
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "g"},
        },
        "tool_choice",
        "'g'",
    ),
    (
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format",
        "'schema'",
    ),
    (
        {
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 1}}},
        },
        "text.format.schema",
        "not a valid JSON schema",
    ),
    ({"input": "x", "background": True}, "background", "not supported"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"input": "x", "top_logprobs": 21}, "top_logprobs", ""),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", ""),
]


@pytest.mark.parametrize(("body", "param", "needle"), BAD_RESPONSES, ids=range(len(BAD_RESPONSES)))
def test_bad_responses_requests_are_400s(body: dict[str, Any], param: str, needle: str) -> None:
    error = _error("/responses", body)
    assert error["param"] == param
    assert needle in error["message"]


def test_openapi_schema_builds() -> None:
    spec = app.openapi()
    assert "ChatCompletionRequest" in spec["components"]["schemas"]


# --------------------------------------------------------------------------- response shapes


LOGPROBS = ChatLogprobs(
    content=[
        ChatTokenLogprob(
            token="Hi",
            logprob=-0.1,
            bytes=[72, 105],
            top_logprobs=[ChatTopLogprob(token="Hi", logprob=-0.1, bytes=[72, 105])],
        )
    ]
)


def test_chat_completion_with_tool_calls_parses_in_the_sdk() -> None:
    completion = ChatCompletion(
        model="m",
        choices=[
            ChatChoice(
                index=0,
                message=ChatResponseMessage(
                    content=None,
                    tool_calls=[
                        ToolCall(
                            id="call_1",
                            function=ToolCallFunction(name="get_weather", arguments='{"city":"P"}'),
                        )
                    ],
                ),
                finish_reason="tool_calls",
                logprobs=LOGPROBS,
            ),
            ChatChoice(
                index=1,
                message=ChatResponseMessage(content="Hi"),
                finish_reason="stop",
            ),
        ],
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
    )
    parsed = sdk_chat.ChatCompletion.model_validate(completion.model_dump())
    call = parsed.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.choices[0].logprobs.content[0].top_logprobs[0].token == "Hi"  # type: ignore[union-attr,index]
    assert parsed.choices[1].message.content == "Hi"


def test_chunk_with_tool_call_delta_parses_in_the_sdk() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[
            ChatChunkChoice(
                index=1,
                delta=ChatDelta(
                    tool_calls=[
                        ToolCallDelta(
                            index=0,
                            id="call_1",
                            type="function",
                            function=ToolCallDeltaFunction(name="f", arguments=""),
                        )
                    ]
                ),
                logprobs=LOGPROBS,
            )
        ],
    )
    parsed = sdk_chat.ChatCompletionChunk.model_validate(chunk.model_dump())
    assert parsed.choices[0].delta.tool_calls[0].function.name == "f"  # type: ignore[index,union-attr]
    assert parsed.choices[0].index == 1


def test_completion_logprobs_parse_in_the_sdk() -> None:
    completion = Completion(
        model="m",
        choices=[
            CompletionChoice(
                text="Hi",
                finish_reason="length",
                logprobs=CompletionLogprobs(
                    tokens=["Hi"],
                    token_logprobs=[-0.1],
                    top_logprobs=[{"Hi": -0.1}],
                    text_offset=[0],
                ),
            )
        ],
    )
    parsed = sdk_completion.Completion.model_validate(completion.model_dump())
    assert parsed.choices[0].logprobs.tokens == ["Hi"]  # type: ignore[union-attr]


def test_embedding_list_parses_in_the_sdk() -> None:
    body = EmbeddingList(
        data=[Embedding(index=0, embedding=[0.5, -0.5])],
        model="m",
        usage=EmbeddingUsage(prompt_tokens=2, total_tokens=2),
    )
    parsed = sdk_embedding.CreateEmbeddingResponse.model_validate(body.model_dump())
    assert parsed.data[0].embedding == [0.5, -0.5]
