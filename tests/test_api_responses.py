"""The Responses API translation without the model: request -> chat request, chat answer ->
Response object, chat-level stream -> Responses events, checked with the official `openai`
SDK (its types, and its own stream parser and `responses.stream` helper over a mock transport),
and the bounded store behind `previous_response_id`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response as SDKResponse

from llamanet.node.errors import APIError
from llamanet.node.responses import (
    ResponseStore,
    ResponseStreamTranslator,
    from_chat,
    sse_event,
    to_chat,
)
from llamanet.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    ResponsesRequest,
    ResponsesTokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolCallDeltaFunction,
    ToolCallFunction,
    Usage,
)

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
USAGE = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)


def _request(**body: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **body})


def _completion(
    content: str | None = "Hello!", calls: list[ToolCall] | None = None, finish: str = "stop"
) -> ChatCompletion:
    return ChatCompletion(
        model="m",
        choices=[
            ChatChoice(
                message=ChatResponseMessage(content=content, tool_calls=calls),
                finish_reason=finish,  # type: ignore[arg-type]
            )
        ],
        usage=USAGE,
    )


# --------------------------------------------------------------------------- request


def test_string_input_and_instructions() -> None:
    turn = to_chat(
        _request(
            instructions="Be brief.",
            max_output_tokens=20,
            temperature=0.2,
            top_p=0.5,
            top_logprobs=2,
            seed=7,
        ),
        ResponseStore(),
    )
    chat = turn.chat
    assert [(m.role, m.text()) for m in chat.messages] == [("system", "Be brief."), ("user", "hi")]
    assert chat.max_completion_tokens == 20 and chat.temperature == 0.2 and chat.top_p == 0.5
    assert chat.logprobs is True and chat.top_logprobs == 2 and chat.seed == 7
    assert [m.role for m in turn.conversation] == ["user"]  # instructions are not kept


def test_items_tools_and_text_format() -> None:
    request = _request(
        input=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {
                "type": "function_call",
                "call_id": "call_2",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
        ],
        tools=[TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={
            "format": {
                "type": "json_schema",
                "name": "w",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
    )
    chat = to_chat(request, ResponseStore()).chat
    roles = [m.role for m in chat.messages]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assert [c.id for c in chat.messages[2].tool_calls or ()] == ["call_1", "call_2"]
    assert chat.tools and chat.tools[0].function.name == "get_weather"
    assert chat.tool_choice_mode() == "get_weather" and chat.parallel_tool_calls is False
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.schema_ == {"type": "object"}
    assert chat.response_format.json_schema.strict is True


def test_an_orphan_function_call_output_is_a_400() -> None:
    request = _request(input=[{"type": "function_call_output", "call_id": "nope", "output": "x"}])
    with pytest.raises(APIError) as caught:
        to_chat(request, ResponseStore())
    assert caught.value.status == 400 and caught.value.detail.param == "input"
    assert "nope" in caught.value.detail.message


# --------------------------------------------------------------------------- response


def test_text_answer_parses_in_the_sdk() -> None:
    request = _request(metadata={"k": "v"})
    completion = _completion()
    completion.choices[0].logprobs = ChatLogprobs(
        content=[ChatTokenLogprob(token="Hello", logprob=-0.5, bytes=[72], top_logprobs=[])]
    )
    response = from_chat(request, completion)
    parsed = SDKResponse.model_validate(response.model_dump())
    assert parsed.output_text == "Hello!" == response.output_text()
    assert parsed.status == "completed" and parsed.id.startswith("resp_")
    assert parsed.usage is not None and parsed.usage.input_tokens == 10
    assert parsed.usage.total_tokens == 15 and parsed.metadata == {"k": "v"}
    assert parsed.output[0].content[0].logprobs[0].token == "Hello"  # type: ignore[union-attr,index]


def test_function_calls_and_echoed_settings_parse_in_the_sdk() -> None:
    request = _request(
        tools=[TOOL],
        tool_choice="required",
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
    )
    calls = [ToolCall(id="call_1", function=ToolCallFunction(name="get_weather", arguments="{}"))]
    response = from_chat(request, _completion(content=None, calls=calls, finish="tool_calls"))
    dumped = response.model_dump()
    assert dumped["text"]["format"]["schema"] == {"type": "object"}  # by its alias
    parsed = SDKResponse.model_validate(dumped)
    item = parsed.output[0]
    assert item.type == "function_call" and item.call_id == "call_1"  # type: ignore[union-attr]
    assert item.id.startswith("fc_")  # type: ignore[union-attr]
    assert parsed.tools[0].name == "get_weather"  # type: ignore[union-attr]
    assert parsed.output_text == ""


def test_a_cut_answer_is_incomplete() -> None:
    response = from_chat(_request(max_output_tokens=3), _completion(finish="length"))
    parsed = SDKResponse.model_validate(response.model_dump())
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"


# --------------------------------------------------------------------------- store


def test_previous_response_id_continues_the_conversation() -> None:
    store = ResponseStore()
    first = to_chat(_request(instructions="Be brief.", input="My name is Ada."), store)
    response = from_chat(first.request, _completion("Hi Ada."))
    store.put(first, response)
    second = to_chat(_request(input="What is my name?", previous_response_id=response.id), store)
    texts = [(m.role, m.text()) for m in second.chat.messages]
    assert texts == [
        ("user", "My name is Ada."),
        ("assistant", "Hi Ada."),
        ("user", "What is my name?"),
    ]


def test_function_calls_are_kept_for_the_next_turn() -> None:
    store = ResponseStore()
    first = to_chat(_request(input="Weather?", tools=[TOOL]), store)
    calls = [ToolCall(id="call_9", function=ToolCallFunction(name="get_weather", arguments="{}"))]
    response = from_chat(first.request, _completion(None, calls, "tool_calls"))
    store.put(first, response)
    output = {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}
    second = to_chat(
        _request(input=[output], previous_response_id=response.id, tools=[TOOL]), store
    )
    assert [m.role for m in second.chat.messages] == ["user", "assistant", "tool"]


def test_store_false_keeps_nothing_and_unknown_ids_are_400s() -> None:
    store = ResponseStore()
    turn = to_chat(_request(store=False), store)
    response = from_chat(turn.request, _completion())
    store.put(turn, response)
    assert len(store) == 0
    with pytest.raises(APIError) as caught:
        to_chat(_request(previous_response_id=response.id), store)
    assert caught.value.status == 400 and caught.value.detail.code == "previous_response_not_found"
    assert caught.value.detail.param == "previous_response_id"


def test_the_store_is_a_bounded_lru() -> None:
    store = ResponseStore(capacity=2)
    ids = []
    for _ in range(3):
        turn = to_chat(_request(), store)
        response = from_chat(turn.request, _completion())
        store.put(turn, response)
        ids.append(response.id)
        if len(ids) == 2:
            assert store.get(ids[0]) is not None  # touched: the second becomes the oldest
    assert len(store) == 2
    assert store.get(ids[0]) is not None and store.get(ids[2]) is not None
    assert store.get(ids[1]) is None


# --------------------------------------------------------------------------- stream


def _stream_events(request: ResponsesRequest) -> list[Any]:
    """A text piece, two parallel calls in pieces, the finish."""
    translator = ResponseStreamTranslator(request, model="m")
    events = translator.start()
    events += translator.text("Let me ")
    logprob = ResponsesTokenLogprob(token="check", logprob=-0.1, bytes=[99], top_logprobs=[])
    events += translator.text("check.", [logprob])
    for index, (call_id, city) in enumerate([("call_1", "Paris"), ("call_2", "Rome")]):
        events += translator.tool_call(
            ToolCallDelta(
                index=index,
                id=call_id,
                type="function",
                function=ToolCallDeltaFunction(name="get_weather", arguments=""),
            )
        )
        for piece in ('{"city": ', f'"{city}"}}'):
            events += translator.tool_call(
                ToolCallDelta(index=index, function=ToolCallDeltaFunction(arguments=piece))
            )
    events += translator.finish("tool_calls", USAGE)
    return events


def test_stream_event_sequence() -> None:
    events = _stream_events(_request(tools=[TOOL], top_logprobs=0))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1].response
    assert done.status == "completed" and done.usage.output_tokens == 5
    assert done.output_text() == "Let me check."
    assert [item.type for item in done.output] == ["message", "function_call", "function_call"]
    assert done.output[2].arguments == '{"city": "Rome"}'
    assert events[0].response.output == [] and events[0].response.status == "in_progress"


def _sdk_client(body: Callable[[dict[str, Any]], bytes], content_type: str) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=body(json.loads(request.content)), headers={"content-type": content_type}
        )

    return openai.OpenAI(
        base_url="http://node.test/v1",
        api_key="unused",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def _sse(payload: dict[str, Any]) -> bytes:
    request = ResponsesRequest.model_validate(payload)
    return b"".join(sse_event(event) for event in _stream_events(request))


def test_the_sdk_parses_the_stream() -> None:
    client = _sdk_client(_sse, "text/event-stream")
    stream = client.responses.create(model="m", input="hi", tools=[TOOL], stream=True)  # type: ignore[list-item]
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Let me check."


def test_the_sdk_stream_helper_gives_the_final_response() -> None:
    client = _sdk_client(_sse, "text/event-stream")
    with client.responses.stream(model="m", input="hi", tools=[TOOL]) as stream:  # type: ignore[list-item]
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == "Let me check." == final.output_text
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]  # type: ignore[union-attr]


def test_the_sdk_parses_a_whole_response() -> None:
    def body(payload: dict[str, Any]) -> bytes:
        request = ResponsesRequest.model_validate(payload)
        return from_chat(request, _completion("Bonjour")).model_dump_json().encode()

    client = _sdk_client(body, "application/json")
    response = client.responses.create(model="m", input="hi", instructions="French.")
    assert response.output_text == "Bonjour" and response.instructions == "French."


def test_a_cut_stream_ends_incomplete_and_errors_are_an_event() -> None:
    translator = ResponseStreamTranslator(_request(), model="m")
    events = translator.start() + translator.text("abc") + translator.finish("length", USAGE)
    assert events[-1].type == "response.incomplete"
    assert events[-2].item.status == "incomplete"
    error = translator.error({"error": {"message": "boom", "code": "generation_failed"}})[0]
    assert error.type == "error" and error.message == "boom"
    assert error.sequence_number == events[-1].sequence_number + 1
