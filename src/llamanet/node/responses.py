"""The Responses API (`POST /v1/responses`) as a translation to and from chat completions.

A Responses request becomes a `ChatCompletionRequest` (`to_chat`): `instructions` become the
system message, `input` items become messages (`function_call` items become an assistant
message's `tool_calls`, `function_call_output` items `tool` messages), `text.format` becomes
`response_format`, function `tools`, `tool_choice`, `max_output_tokens`, `temperature`,
`top_p` and `top_logprobs` map one to one. The chat answer becomes a Response object
(`from_chat`), and a chat-level stream (text deltas, tool call deltas, the finish) becomes the
Responses event sequence (`ResponseStreamTranslator`), every event numbered.

`previous_response_id` continues a conversation kept by this node in `ResponseStore`: a bounded
LRU of the last `capacity` responses (default 256) with their conversations, in memory, lost on
restart, and per node (a follow-up must reach the node that answered; a request naming an id
this node does not hold is a 400 `previous_response_not_found`). `store: false` keeps nothing.
As in OpenAI's API, the previous response's `instructions` are not carried over.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llamanet.node.errors import APIError
from llamanet.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatMessage,
    ItemStatus,
    ResponseArgumentsDeltaEvent,
    ResponseArgumentsDoneEvent,
    ResponseContentPartEvent,
    ResponseErrorEvent,
    ResponseFunctionCall,
    ResponseIncompleteDetails,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponseOutputItemEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponsesInputItem,
    ResponsesNamedToolChoice,
    ResponsesRequest,
    ResponsesTextConfig,
    ResponsesTokenLogprob,
    ResponsesTopLogprob,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallFunction,
    Usage,
    new_item_id,
    validation_code,
)

__all__ = [
    "ResponseStore",
    "ResponseStreamTranslator",
    "ResponsesTurn",
    "from_chat",
    "sse_event",
    "to_chat",
]

DEFAULT_STORE_CAPACITY = 256


# --------------------------------------------------------------------------- the store


@dataclass
class _Stored:
    response: ResponseObject
    conversation: list[ChatMessage]  # without instructions, output included


class ResponseStore:
    """The last `capacity` stored responses of this node, least recently used evicted first."""

    def __init__(self, capacity: int = DEFAULT_STORE_CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, response_id: str) -> _Stored | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, turn: ResponsesTurn, response: ResponseObject) -> None:
        """Keeps a finished response (unless its request said `store: false`)."""
        if not turn.request.store or self.capacity <= 0:
            return
        conversation = [*turn.conversation, *_output_messages(response)]
        self._items[response.id] = _Stored(response, conversation)
        self._items.move_to_end(response.id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def _output_messages(response: ResponseObject) -> list[ChatMessage]:
    text = response.output_text()
    calls = [
        ToolCall(
            id=item.call_id, function=ToolCallFunction(name=item.name, arguments=item.arguments)
        )
        for item in response.output
        if isinstance(item, ResponseFunctionCall)
    ]
    if not text and not calls:
        return []
    return [ChatMessage(role="assistant", content=text or None, tool_calls=calls or None)]


# --------------------------------------------------------------------------- request


@dataclass
class ResponsesTurn:
    """One Responses request translated: the chat request to run, and the conversation (no
    instructions) that a stored response continues from."""

    request: ResponsesRequest
    chat: ChatCompletionRequest
    conversation: list[ChatMessage] = field(default_factory=list)


def _input_messages(items: str | list[ResponsesInputItem]) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for item in items:
        if item.type == "message":
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": item.text()})
        elif item.type == "function_call":
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
    return out


def _response_format(text: ResponsesTextConfig | None) -> dict[str, Any] | None:
    if text is None or text.format.type == "text":
        return None
    fmt = text.format
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _chat_param(loc: tuple[Any, ...]) -> str:
    """The Responses field a chat-side validation error is about."""
    head = str(loc[0]) if loc else ""
    return {
        "messages": "input",
        "response_format": "text.format",
        "max_completion_tokens": "max_output_tokens",
        "top_logprobs": "top_logprobs",
    }.get(head, head or "input")


def to_chat(request: ResponsesRequest, store: ResponseStore) -> ResponsesTurn:
    """The chat request for a Responses request (raises `APIError` 400 for an unknown
    `previous_response_id` or history the chat API refuses, such as an orphan
    `function_call_output`)."""
    history: list[dict[str, Any]] = []
    if request.previous_response_id is not None:
        stored = store.get(request.previous_response_id)
        if stored is None:
            raise APIError(
                400,
                f"Previous response with id '{request.previous_response_id}' not found "
                "(this node keeps its last stored responses only; see store).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = [m.model_dump(exclude_none=True) for m in stored.conversation]
    conversation = [*history, *_input_messages(request.input)]
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [*system, *conversation],
        "max_completion_tokens": request.max_output_tokens,
        "seed": request.seed,
        "response_format": _response_format(request.text),
    }
    if "parallel_tool_calls" in request.model_fields_set:  # else chat's default, as sent
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_logprobs is not None:
        body["logprobs"], body["top_logprobs"] = True, request.top_logprobs
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": tool.model_dump(exclude={"type"}, exclude_none=True),
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if isinstance(choice, ResponsesNamedToolChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise APIError(
            400,
            f"Invalid input: {first['msg']}.",
            param=_chat_param(tuple(first.get("loc", ()))),
            code=validation_code(first.get("type")),
        ) from None
    messages = chat.messages[len(system) :]
    return ResponsesTurn(request, chat, messages)


# --------------------------------------------------------------------------- response


def _echo(request: ResponsesRequest, *, model: str, response_id: str | None) -> ResponseObject:
    """A Response object with the request's settings and no output yet."""
    return ResponseObject(
        id=response_id or new_item_id("resp"),
        model=model,
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        parallel_tool_calls=request.parallel_tool_calls,
        previous_response_id=request.previous_response_id,
        store=request.store,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_logprobs=request.top_logprobs,
        text=request.text or ResponsesTextConfig(),
        tool_choice=request.tool_choice or "auto",
        tools=list(request.tools or ()),
        user=request.user,
        metadata=dict(request.metadata or {}),
    )


def _usage(usage: Usage | None) -> ResponseUsage | None:
    if usage is None:
        return None
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _logprobs(logprobs: ChatLogprobs | None) -> list[ResponsesTokenLogprob] | None:
    if logprobs is None or logprobs.content is None:
        return None
    return [
        ResponsesTokenLogprob(
            token=item.token,
            logprob=item.logprob,
            bytes=item.bytes or [],
            top_logprobs=[
                ResponsesTopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes or [])
                for t in item.top_logprobs
            ],
        )
        for item in logprobs.content
    ]


def _finish(response: ResponseObject, finish_reason: str | None, usage: Usage | None) -> None:
    response.usage = _usage(usage)
    if finish_reason == "length":
        response.status = "incomplete"
        response.incomplete_details = ResponseIncompleteDetails(reason="max_output_tokens")
    else:
        response.status = "completed"
        response.completed_at = time.time()


def from_chat(
    request: ResponsesRequest, completion: ChatCompletion, *, response_id: str | None = None
) -> ResponseObject:
    """The Response object for a (non-streamed) chat answer to `to_chat(request)`."""
    response = _echo(request, model=completion.model, response_id=response_id)
    choice = completion.choices[0]
    status: ItemStatus = "incomplete" if choice.finish_reason == "length" else "completed"
    if choice.message.content:
        part = ResponseOutputText(text=choice.message.content, logprobs=_logprobs(choice.logprobs))
        response.output.append(ResponseOutputMessage(status=status, content=[part]))
    for call in choice.message.tool_calls or ():
        response.output.append(
            ResponseFunctionCall(
                call_id=call.id, name=call.function.name, arguments=call.function.arguments
            )
        )
    _finish(response, choice.finish_reason, completion.usage)
    return response


# --------------------------------------------------------------------------- stream


def sse_event(event: ResponseStreamEvent) -> bytes:
    """One Responses stream event as SSE (`event: <type>`, `data: <json>`)."""
    from fastapi.sse import format_sse_event

    return format_sse_event(data_str=event.model_dump_json(), event=event.type)


class ResponseStreamTranslator:
    """Chat-level stream events in, Responses API events out (numbered from 0).

    Call `start()` once, then `text(...)` / `tool_call(...)` as deltas arrive, then
    `finish(finish_reason, usage)` (or `error(...)`); `response` is the Response object as it
    stands (complete after `finish`, ready for `ResponseStore.put`).
    """

    def __init__(
        self, request: ResponsesRequest, *, model: str, response_id: str | None = None
    ) -> None:
        self.response = _echo(request, model=model, response_id=response_id)
        self._seq = 0
        self._message: ResponseOutputMessage | None = None
        self._call: ResponseFunctionCall | None = None

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _snapshot(self, kind: str) -> ResponseLifecycleEvent:
        return ResponseLifecycleEvent(
            type=kind,  # type: ignore[arg-type]
            sequence_number=self._next(),
            response=self.response.model_copy(deep=True),
        )

    def start(self) -> list[ResponseStreamEvent]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def _index(self, item: Any) -> int:
        return next(i for i, it in enumerate(self.response.output) if it is item)

    def _added(self, item: ResponseOutputMessage | ResponseFunctionCall) -> ResponseStreamEvent:
        self.response.output.append(item)
        return ResponseOutputItemEvent(
            type="response.output_item.added",
            sequence_number=self._next(),
            output_index=len(self.response.output) - 1,
            item=item.model_copy(deep=True),
        )

    def text(
        self, delta: str, logprobs: Sequence[ResponsesTokenLogprob] = ()
    ) -> list[ResponseStreamEvent]:
        if not delta:
            return []
        events: list[ResponseStreamEvent] = self._close_call()
        if self._message is None:
            self._message = ResponseOutputMessage(status="in_progress")
            events.append(self._added(self._message))
            self._message.content.append(ResponseOutputText(text="", logprobs=[]))
            events.append(self._part("response.content_part.added"))
        part = self._message.content[0]
        part.text += delta
        if part.logprobs is not None:
            part.logprobs.extend(logprobs)
        events.append(
            ResponseTextDeltaEvent(
                sequence_number=self._next(),
                item_id=self._message.id,
                output_index=self._index(self._message),
                content_index=0,
                delta=delta,
                logprobs=list(logprobs),
            )
        )
        return events

    def _part(self, kind: str) -> ResponseContentPartEvent:
        assert self._message is not None
        return ResponseContentPartEvent(
            type=kind,  # type: ignore[arg-type]
            sequence_number=self._next(),
            item_id=self._message.id,
            output_index=self._index(self._message),
            content_index=0,
            part=self._message.content[0].model_copy(deep=True),
        )

    def _close_message(self, status: str) -> list[ResponseStreamEvent]:
        message = self._message
        if message is None:
            return []
        self._message = None
        part = message.content[0]
        if not part.logprobs:
            part.logprobs = None if self.response.top_logprobs is None else []
        index = self._index(message)
        done = ResponseTextDoneEvent(
            sequence_number=self._next(),
            item_id=message.id,
            output_index=index,
            content_index=0,
            text=part.text,
            logprobs=list(part.logprobs or ()),
        )
        self._message = message
        part_done = self._part("response.content_part.done")
        self._message = None
        message.status = status  # type: ignore[assignment]
        item_done = ResponseOutputItemEvent(
            type="response.output_item.done",
            sequence_number=self._next(),
            output_index=index,
            item=message.model_copy(deep=True),
        )
        return [done, part_done, item_done]

    def tool_call(self, delta: ToolCallDelta) -> list[ResponseStreamEvent]:
        events: list[ResponseStreamEvent] = []
        fragment = delta.function.arguments if delta.function else None
        if delta.id is not None:  # a new call: its header
            events += self._close_message("completed") + self._close_call()
            name = (delta.function.name if delta.function else None) or ""
            self._call = ResponseFunctionCall(
                call_id=delta.id, name=name, arguments="", status="in_progress"
            )
            events.append(self._added(self._call))
        if fragment and self._call is not None:
            self._call.arguments += fragment
            events.append(
                ResponseArgumentsDeltaEvent(
                    sequence_number=self._next(),
                    item_id=self._call.id,
                    output_index=self._index(self._call),
                    delta=fragment,
                )
            )
        return events

    def _close_call(self, status: str = "completed") -> list[ResponseStreamEvent]:
        call = self._call
        if call is None:
            return []
        self._call = None
        index = self._index(call)
        call.status = status  # type: ignore[assignment]
        return [
            ResponseArgumentsDoneEvent(
                sequence_number=self._next(),
                item_id=call.id,
                output_index=index,
                name=call.name,
                arguments=call.arguments,
            ),
            ResponseOutputItemEvent(
                type="response.output_item.done",
                sequence_number=self._next(),
                output_index=index,
                item=call.model_copy(deep=True),
            ),
        ]

    def finish(self, finish_reason: str | None, usage: Usage | None) -> list[ResponseStreamEvent]:
        status = "incomplete" if finish_reason == "length" else "completed"
        events = self._close_message(status) + self._close_call(status)
        _finish(self.response, finish_reason, usage)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        events.append(self._snapshot(kind))
        return events

    def error(self, body: dict[str, Any]) -> list[ResponseStreamEvent]:
        """The event that ends a stream failing after it started (`body`: an OpenAI error
        body, as `llamanet.node.errors.stream_error_body` makes)."""
        detail = body.get("error", {})
        return [
            ResponseErrorEvent(
                sequence_number=self._next(),
                code=detail.get("code"),
                message=detail.get("message", "error"),
                param=detail.get("param"),
            )
        ]
