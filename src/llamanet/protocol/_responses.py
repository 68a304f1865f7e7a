"""The Responses API (`POST /v1/responses`): the request, the Response object, its stream events.

A second OpenAI API with its own spellings (`input` items, `text.format`, `resp_…` ids, typed
stream events), so it has its own models even where chat has an equivalent; what both check the
same way (tools, tool_choice, number fields) comes from `_tools`, `_sampling` and `_common`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import (
    _NON_TEXT_PARTS,
    FunctionName,
    Number,
    Unsupported,
    _check_json_schema,
    _json_kind,
    _Lenient,
    _now,
    _RequestBody,
    _text_only,
)
from llamanet.protocol._logprobs import MAX_TOP_LOGPROBS
from llamanet.protocol._sampling import MaxTokens, Temperature, TopP
from llamanet.protocol._tools import (
    MAX_TOOLS,
    FunctionDefinition,
    ToolChoiceMode,
    _function_tool_only,
    check_tool_choice,
    check_tool_names,
)

__all__ = [
    "ItemStatus",
    "ResponseArgumentsDeltaEvent",
    "ResponseArgumentsDoneEvent",
    "ResponseContentPartEvent",
    "ResponseErrorEvent",
    "ResponseErrorInfo",
    "ResponseFunctionCall",
    "ResponseIncompleteDetails",
    "ResponseInputTokensDetails",
    "ResponseLifecycleEvent",
    "ResponseObject",
    "ResponseOutputItem",
    "ResponseOutputItemEvent",
    "ResponseOutputMessage",
    "ResponseOutputText",
    "ResponseOutputTokensDetails",
    "ResponseStreamEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseUsage",
    "ResponsesContent",
    "ResponsesFunctionTool",
    "ResponsesInputItem",
    "ResponsesNamedToolChoice",
    "ResponsesRequest",
    "ResponsesTextConfig",
    "ResponsesTextFormat",
    "ResponsesTextPart",
    "ResponsesTokenLogprob",
    "ResponsesTopLogprob",
    "new_item_id",
]


def new_item_id(prefix: str) -> str:
    """An id in the Responses API's spelling: `resp_…`, `msg_…`, `fc_…`, `call_…`."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


_TEXT_PART_TYPES = frozenset({"input_text", "output_text", "text"})


def _responses_parts(value: Any) -> Any:
    """Input content parts are text (`input_text`, and `output_text` in assistant history)."""
    if not isinstance(value, list):
        return value
    parts = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            kind = None
        if kind in _NON_TEXT_PARTS:
            raise _text_only()
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            part = {"type": "output_text", "text": part["refusal"]}
        elif kind not in _TEXT_PART_TYPES:
            raise PydanticCustomError(
                "content_part",
                "a content part must be of type 'input_text' or 'output_text', not '{kind}'",
                {"kind": kind},
            )
        parts.append(part)
    return parts


class ResponsesTextPart(_Lenient):
    type: Literal["input_text", "output_text", "text"]
    text: str


ResponsesContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[ResponsesTextPart], Tag("list")],
    Discriminator(_json_kind),
    BeforeValidator(_responses_parts),
]
_INPUT_ITEM_TYPES = ("message", "function_call", "function_call_output")


def _input_item_type(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type", "message") not in _INPUT_ITEM_TYPES:
        raise PydanticCustomError(
            "input_item",
            "input items of type '{kind}' are not supported (only 'message', 'function_call' "
            "and 'function_call_output')",
            {"kind": value.get("type")},
        )
    return value


class ResponsesInputItem(_Lenient):
    """One `input` item: a message, a function call the model made, or a call's output."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: ResponsesContent | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: ResponsesContent | None = None

    @model_validator(mode="after")
    def _fields_of_type(self) -> ResponsesInputItem:
        needed = {
            "message": ("role", "content"),
            "function_call": ("call_id", "name", "arguments"),
            "function_call_output": ("call_id", "output"),
        }[self.type]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise PydanticCustomError(
                "input_item",
                "a '{kind}' input item needs {missing}",
                {"kind": self.type, "missing": ", ".join(repr(m) for m in missing)},
            )
        return self

    def text(self) -> str:
        value = self.content if self.type == "message" else self.output
        if value is None:
            return ""
        return value if isinstance(value, str) else "".join(p.text for p in value)


class ResponsesFunctionTool(FunctionDefinition):
    """A Responses `tools` entry: the function's fields at the top level."""

    type: Literal["function"]


class ResponsesNamedToolChoice(_Lenient):
    type: Literal["function"]
    name: str


def _responses_tool_choice(value: Any) -> Any:
    if value is None or value in ("none", "auto", "required") or isinstance(value, dict):
        return value
    raise PydanticCustomError(
        "tool_choice",
        "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}",
    )


class ResponsesTextFormat(_Lenient):
    """`text.format`: like chat's `response_format`, with the json_schema fields inline."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)

    type: Literal["text", "json_object", "json_schema"]
    name: FunctionName | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None

    @field_validator("schema_", mode="before")
    @classmethod
    def _valid_schema(cls, value: Any) -> Any:
        if value is not None:
            _check_json_schema(value, what="text.format's schema")
        return value

    @model_validator(mode="after")
    def _schema_given(self) -> ResponsesTextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise PydanticCustomError(
                "missing_schema", "text.format of type 'json_schema' needs 'name' and 'schema'"
            )
        return self


class ResponsesTextConfig(_Lenient):
    format: ResponsesTextFormat = Field(
        default_factory=lambda: ResponsesTextFormat.model_validate({"type": "text"})
    )
    verbosity: Literal["low", "medium", "high"] | None = None


def _no_truncation(value: Any) -> Any:
    if value == "auto":
        raise PydanticCustomError(
            "unsupported",
            "truncation 'auto' is not supported: input longer than the model's context is a 400 "
            "(truncation 'disabled')",
        )
    return value


class ResponsesRequest(_RequestBody):
    """`POST /v1/responses`."""

    # a valid body for /docs and for schemathesis's examples phase: a random valid body of this
    # schema is rare (9 in 440 generated cases), and the fuzz test wants a generation to run
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"input": "Say hello.", "max_output_tokens": 8}]},
    )

    model: str | None = None
    input: Annotated[
        Annotated[str, Tag("str")]
        | Annotated[
            list[Annotated[ResponsesInputItem, BeforeValidator(_input_item_type)]],
            Field(min_length=1),
            Tag("list"),
        ],
        Discriminator(_json_kind),
    ]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), Number] | None = None
    seed: Annotated[int, Number] | None = None  # an extension (chat has it; Responses not)
    text: ResponsesTextConfig | None = None
    tools: (
        Annotated[
            list[Annotated[ResponsesFunctionTool, BeforeValidator(_function_tool_only)]],
            Field(max_length=MAX_TOOLS),
        ]
        | None
    ) = None
    tool_choice: (
        Annotated[
            ToolChoiceMode | ResponsesNamedToolChoice, BeforeValidator(_responses_tool_choice)
        ]
        | None
    ) = None
    parallel_tool_calls: StrictBool = True
    max_tool_calls: Annotated[int, Field(ge=1), Number] | None = None  # calls beyond are dropped
    truncation: Annotated[Literal["disabled"] | None, BeforeValidator(_no_truncation)] = None
    stream: StrictBool = False
    previous_response_id: str | None = None
    store: StrictBool = True
    metadata: dict[str, str] | None = None  # echoed, otherwise ignored
    user: str | None = None  # accepted and ignored
    background: Unsupported = None
    conversation: Unsupported = None
    prompt: Unsupported = None

    @field_validator("input")
    @classmethod
    def _input_not_empty(
        cls, value: str | list[ResponsesInputItem]
    ) -> str | list[ResponsesInputItem]:
        if isinstance(value, str) and not value:
            raise PydanticCustomError("input", "input must not be empty")
        return value

    @field_validator("tools")
    @classmethod
    def _unique_tools(
        cls, tools: list[ResponsesFunctionTool] | None
    ) -> list[ResponsesFunctionTool] | None:
        check_tool_names([tool.name for tool in tools or ()])
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(
        cls, choice: str | ResponsesNamedToolChoice | None, info: ValidationInfo
    ) -> str | ResponsesNamedToolChoice | None:
        if "tools" not in info.data:
            return choice
        name = choice.name if isinstance(choice, ResponsesNamedToolChoice) else choice
        check_tool_choice(name, [tool.name for tool in info.data["tools"] or ()])
        return choice


class ResponsesTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(default_factory=list)


class ResponsesTokenLogprob(ResponsesTopLogprob):
    top_logprobs: list[ResponsesTopLogprob] = Field(default_factory=list)


class ResponseOutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[ResponsesTokenLogprob] | None = None


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseOutputMessage(BaseModel):
    id: str = Field(default_factory=lambda: new_item_id("msg"))
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus = "completed"
    content: list[ResponseOutputText] = Field(default_factory=list)


class ResponseFunctionCall(BaseModel):
    id: str = Field(default_factory=lambda: new_item_id("fc"))
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


ResponseOutputItem = Annotated[
    ResponseOutputMessage | ResponseFunctionCall, Field(discriminator="type")
]


class ResponseInputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class ResponseOutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: ResponseInputTokensDetails = Field(
        default_factory=ResponseInputTokensDetails
    )
    output_tokens: int
    output_tokens_details: ResponseOutputTokensDetails = Field(
        default_factory=ResponseOutputTokensDetails
    )
    total_tokens: int


class ResponseIncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] | None = None


class ResponseErrorInfo(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The Response object (`object: "response"`): returned, streamed, and kept for
    `previous_response_id`."""

    id: str = Field(default_factory=lambda: new_item_id("resp"))
    object: Literal["response"] = "response"
    created_at: float = Field(default_factory=lambda: float(_now()))
    completed_at: float | None = None
    status: Literal["completed", "incomplete", "in_progress", "failed"] = "in_progress"
    error: ResponseErrorInfo | None = None
    incomplete_details: ResponseIncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[ResponseOutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    text: ResponsesTextConfig = Field(default_factory=ResponsesTextConfig)
    tool_choice: ToolChoiceMode | ResponsesNamedToolChoice = "auto"
    tools: list[ResponsesFunctionTool] = Field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    def output_text(self) -> str:
        """All output text, as the SDK's `Response.output_text` computes it."""
        return "".join(
            part.text
            for item in self.output
            if isinstance(item, ResponseOutputMessage)
            for part in item.content
        )


class _ResponseEvent(BaseModel):
    sequence_number: int


class ResponseLifecycleEvent(_ResponseEvent):
    """`response.created`, `response.in_progress`, `response.completed`,
    `response.incomplete`, `response.failed`: the whole Response as it stands."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: ResponseObject


class ResponseOutputItemEvent(_ResponseEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: ResponseOutputItem


class ResponseContentPartEvent(_ResponseEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: ResponseOutputText


class ResponseTextDeltaEvent(_ResponseEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[ResponsesTokenLogprob] = Field(default_factory=list)


class ResponseTextDoneEvent(_ResponseEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[ResponsesTokenLogprob] = Field(default_factory=list)


class ResponseArgumentsDeltaEvent(_ResponseEvent):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    item_id: str
    output_index: int
    delta: str


class ResponseArgumentsDoneEvent(_ResponseEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ResponseErrorEvent(_ResponseEvent):
    """A stream that fails after it started ends with this event."""

    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None


ResponseStreamEvent = (
    ResponseLifecycleEvent
    | ResponseOutputItemEvent
    | ResponseContentPartEvent
    | ResponseTextDeltaEvent
    | ResponseTextDoneEvent
    | ResponseArgumentsDeltaEvent
    | ResponseArgumentsDoneEvent
    | ResponseErrorEvent
)
