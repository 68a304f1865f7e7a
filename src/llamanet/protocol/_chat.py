"""Chat completions: messages, the request, the answer, and the stream chunks.

`ChoiceFields` (how many choices, structured output, tools, logprobs, logit bias) is here
because chat defines it; the native `StreamingRequest` extends it so the native API honours
those fields exactly as chat does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import (
    _NON_TEXT_PARTS,
    Number,
    StreamOptions,
    Unsupported,
    Usage,
    _json_kind,
    _Lenient,
    _now,
    _text_only,
    new_id,
)
from llamanet.protocol._logprobs import MAX_TOP_LOGPROBS, ChatLogprobs
from llamanet.protocol._sampling import MAX_N, LogitBias, MaxTokens, SamplingFields
from llamanet.protocol._structured import ResponseFormat
from llamanet.protocol._tools import (
    MAX_TOOLS,
    ChatTool,
    ChatToolChoice,
    NamedToolChoice,
    ToolCall,
    _function_tool_only,
    check_tool_choice,
    check_tool_names,
)

__all__ = [
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChatFinishReason",
    "ChatMessage",
    "ChatResponseMessage",
    "ChoiceFields",
    "TextContentPart",
    "ToolCallDelta",
    "ToolCallDeltaFunction",
    "check_tool_results",
]


def _text_modality(value: Any) -> Any:
    if value is None or (isinstance(value, list) and all(v == "text" for v in value)):
        return value
    raise PydanticCustomError(
        "text_only", "this model produces text only: 'modalities' may only be ['text']"
    )


class TextContentPart(_Lenient):
    type: Literal["text"]
    text: str


def _content_rule(schema: dict[str, Any]) -> None:
    """`_content_required` in the JSON schema: only an assistant message may lack content or
    carry tool_calls; a tool message names the call it answers."""
    assistant = {"properties": {"role": {"const": "assistant"}}}
    schema["allOf"] = [
        {
            "anyOf": [
                assistant,
                {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
            ]
        },
        {"anyOf": [assistant, {"properties": {"tool_calls": {"type": "null"}}}]},
        {
            "anyOf": [
                {"properties": {"role": {"not": {"const": "tool"}}}},
                {
                    "required": ["tool_call_id"],
                    "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
                },
            ]
        },
    ]


def _text_parts(value: Any) -> Any:
    """Content parts are text: a refusal part (assistant history) counts as its text; an image,
    audio or file part is a clear error (one message, not one per union member)."""
    if not isinstance(value, list):
        return value
    parts = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            kind = None  # the model's validation says what is wrong with it
        if kind in _NON_TEXT_PARTS:
            raise _text_only()
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            part = {"type": "text", "text": part["refusal"]}
        elif kind != "text":
            raise PydanticCustomError(
                "content_part",
                "a content part must be of type 'text', not '{kind}'",
                {"kind": kind},
            )
        parts.append(part)
    return parts


class ChatMessage(_Lenient):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_content_rule)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[
        Annotated[str, Tag("str")]
        | Annotated[list[TextContentPart], Tag("list")]
        | Annotated[None, Tag("none")],
        Discriminator(_json_kind),
        BeforeValidator(_text_parts),
    ] = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None  # assistant only
    tool_call_id: str | None = None  # tool only: the call this message answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs content")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an 'assistant' message carries tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        return self


def check_tool_results(messages: list[ChatMessage]) -> None:
    """Every `tool` message answers a call made by an earlier assistant message."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        for call in message.tool_calls or ():
            calls.add(call.id)
        if message.role == "tool" and message.tool_call_id not in calls:
            raise PydanticCustomError(
                "unknown_tool_call",
                "message {index} is a tool result for tool_call_id '{id}', which matches no "
                "tool call of an earlier assistant message",
                {"index": index, "id": message.tool_call_id},
            )


class ChoiceFields(SamplingFields):
    """What shapes an answer beyond sampling: how many choices, structured output, tools,
    logprobs and logit bias. Chat requests and the native `StreamingRequest` share them, so the
    native API honours them exactly as chat does."""

    n: Annotated[int, Field(ge=1, le=MAX_N), Number] = 1
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), Number] | None = None
    logit_bias: LogitBias = None
    response_format: ResponseFormat | None = None
    tools: (
        Annotated[
            list[Annotated[ChatTool, BeforeValidator(_function_tool_only)]],
            Field(max_length=MAX_TOOLS),
        ]
        | None
    ) = None
    tool_choice: ChatToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise PydanticCustomError("logprobs", "top_logprobs requires logprobs: true")
        return value

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[ChatTool] | None) -> list[ChatTool] | None:
        check_tool_names([tool.function.name for tool in tools or ()])
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(
        cls, choice: str | NamedToolChoice | None, info: ValidationInfo
    ) -> str | NamedToolChoice | None:
        if "tools" not in info.data:
            return choice  # the tools were invalid: that error is reported already
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        check_tool_choice(name, [tool.function.name for tool in info.data["tools"] or ()])
        return choice

    def tool_choice_mode(self) -> str:
        """'none', 'auto', 'required' or the forced function's name (OpenAI's defaults:
        'auto' with tools, 'none' without)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or ("auto" if self.tools else "none")

    def logprobs_k(self) -> int | None:
        """The engine's `SamplingParams.logprobs`: None when off, else the top-k asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None


class ChatCompletionRequest(ChoiceFields):
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    metadata: dict[str, str] | None = None  # accepted and ignored
    # known fields this node cannot honour: a clear 400 rather than a silently different answer
    functions: Unsupported = None
    function_call: Unsupported = None
    audio: Unsupported = None
    web_search_options: Unsupported = None
    moderation: Unsupported = None
    modalities: Annotated[
        list[str] | None,
        BeforeValidator(_text_modality),
        WithJsonSchema(
            {"anyOf": [{"type": "array", "items": {"const": "text"}}, {"type": "null"}]}
        ),
    ] = None

    @field_validator("messages")
    @classmethod
    def _tool_results_answer_calls(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        check_tool_results(messages)
        return messages

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


ChatFinishReason = Literal["stop", "length", "tool_calls"]


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: ChatFinishReason | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class _Sparse(BaseModel):
    """Serialised without its null fields, as OpenAI sends deltas: a stream accumulator (the
    SDK's included) merges each delta into what it has, so an explicit `"type": null` in a later
    piece would erase the `"function"` of the first."""

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ToolCallDeltaFunction(_Sparse):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Sparse):
    """A piece of a streamed tool call: the first carries id, type and name; later ones carry
    fragments of the arguments, to be concatenated per `index`."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class ChatDelta(_Sparse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: ChatFinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
