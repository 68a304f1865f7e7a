"""Wire formats: every request, response, stream chunk, error and DHT record LlamaNet exchanges.

Pydantic models only, no logic beyond field validation. The OpenAI models follow the OpenAI API
so the official SDK works unchanged; the native models (`StreamingRequest`, `StreamingChunk`,
`GenerateResponse`) come from the original streaming plan; `NodeRecord` is what a node publishes
in the DHT.
"""

from __future__ import annotations

import time
import uuid
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

NODE_HEADER = "X-LlamaNet-Node"  # every response names the node that served it

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_TOKENS_LIMIT = 1 << 20  # far beyond any context; a request above it is malformed, not long

FinishReason = Literal["stop", "length"]


# Validation errors of constraints that a JSON schema cannot state (between fields, between
# messages, on the content of a schema) get their own error `code` instead of `invalid_value`,
# so a client (and the fuzzing run, tests/test_fuzz_schemathesis.py) can tell them apart from a
# body that breaks the published schema. Keys are this module's PydanticCustomError types.
VALIDATION_CODES = {
    "unknown_tool_call": "unknown_tool_call",
    "tool_choice": "invalid_tool_choice",
    "duplicate_tool": "duplicate_tool_name",
    "invalid_schema": "invalid_schema",
    "logprobs": "logprobs_required",
    "tools": "tools_need_messages",
    "unsupported": "unsupported_value",
    "missing_schema": "missing_schema",
    "input": "invalid_input",
    "input_item": "invalid_input_item",
}


def validation_code(error_type: str | None) -> str:
    """The error `code` of a validation error of this type (see `VALIDATION_CODES`)."""
    return VALIDATION_CODES.get(error_type or "", "invalid_value")


class _Lenient(BaseModel):
    """Requests ignore unknown fields (as vLLM and llama.cpp do) so newer SDKs keep working."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --------------------------------------------------------------------------- shared pieces


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _invalid_text(value: Any, path: str = "") -> str | None:
    """Where `value` holds a string that is not valid Unicode, else None.

    JSON can escape lone UTF-16 surrogates (`"\\ud800"`) that no UTF-8 text can hold; they would
    reach the tokenizer (and error messages) and fail there.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "the request body"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = _invalid_text(key, path) or _invalid_text(item, f"{path}.{key}".lstrip("."))
            if where:
                return where
    elif isinstance(value, list):
        for index, item in enumerate(value):
            where = _invalid_text(item, f"{path}.{index}".lstrip("."))
            if where:
                return where
    return None


class _RequestBody(_Lenient):
    """A top-level request body: every string in it must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _invalid_text(data)
        if where:
            raise ValueError(f"'{where}' is not valid Unicode text (it holds a lone surrogate)")
        return data


def _json_number(value: Any) -> Any:
    """Numbers must be JSON numbers, as the schema says (and OpenAI requires): pydantic's lax
    mode would also take `"5"` or `true`."""
    if isinstance(value, str | bool):
        raise PydanticCustomError(
            "number_type",
            "Input should be a number, not {kind}",
            {"kind": "a string" if isinstance(value, str) else "a boolean"},
        )
    return value


Number = BeforeValidator(_json_number)


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0), Number]
TopP = Annotated[float, Field(gt=0.0, le=1.0), Number]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0), Number]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), Number]


_STOP_ITEM = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LENGTH}
_STOP_SCHEMA: dict[str, Any] = {  # what `_check_stop` enforces, for the OpenAPI schema
    "anyOf": [
        _STOP_ITEM,
        {"type": "array", "items": _STOP_ITEM, "maxItems": MAX_STOP_SEQUENCES},
        {"type": "null"},
    ],
    "title": "Stop",
    "description": f"Up to {MAX_STOP_SEQUENCES} non-empty stop sequences of at most "
    f"{MAX_STOP_LENGTH} characters each.",
}


MAX_RESUME_TOKENS = 32768  # no context this engine runs is longer


class ResumeFrom(_Lenient):
    """Where a stream that broke on another node left off (`StreamControl.resume`)."""

    token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_RESUME_TOKENS)]
    id: Annotated[str, Field(max_length=128)] | None = None  # the OpenAI stream's id
    created: Annotated[int, Field(ge=0)] | None = None
    index: Annotated[int, Field(ge=0)] = 0  # the native stream's next chunk index
    fingerprint: Annotated[str, Field(max_length=128)] | None = None  # ModelInfo.fingerprint


class StreamControl(_Lenient):
    """The internal `llamanet` field of a generation request: what the gateway and
    `LlamaNetClient` ask of a node to be able to resume a stream on another one. `token_ids`:
    every streamed chunk carries `llamanet_token_ids`, the ids generated since the previous
    chunk; `resume`: continue that stream (same id, no second role chunk, usage counting every
    token) from its token ids, on a node whose model has the same fingerprint."""

    token_ids: StrictBool = False
    resume: ResumeFrom | None = None


class SamplingFields(_RequestBody):
    """Sampling options common to every generation request (OpenAI names plus llama.cpp's)."""

    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=0, le=1000), Number] = 40
    min_p: Annotated[float, Field(ge=0.0, le=1.0), Number] = 0.05
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0), Number] = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    seed: Annotated[int, Number] | None = None
    stop: Annotated[str | list[str] | None, WithJsonSchema(_STOP_SCHEMA)] = None
    llamanet: StreamControl | None = Field(
        default=None, description="Internal: stream resumption between LlamaNet nodes."
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        for stop in stops:
            if not stop:
                raise ValueError("stop sequences must not be empty")
            if len(stop) > MAX_STOP_LENGTH:
                raise ValueError(f"a stop sequence is limited to {MAX_STOP_LENGTH} characters")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # normalised to a list by the validator


# --------------------------------------------------------------------------- tools, formats


MAX_N = 8  # choices per request: each is a sequence of its own in the engine's batch
MAX_TOP_LOGPROBS = 20  # chat `top_logprobs` (the OpenAI limit)
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs` (the OpenAI limit)
MAX_TOOLS = 128  # the OpenAI limit
MAX_LOGIT_BIAS = 300  # entries; OpenAI documents a bias per token id, -100..100
_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # function and schema names, as OpenAI requires

FunctionName = Annotated[str, Field(pattern=_NAME_PATTERN)]
_NON_TEXT_PARTS = frozenset(
    {"image_url", "input_audio", "audio", "image", "file", "input_image", "input_file"}
)


def _text_only() -> PydanticCustomError:
    return PydanticCustomError(
        "text_only",
        "this model accepts text only: image, audio and file content parts are not supported",
    )


def _check_json_schema(schema: Any, *, what: str) -> None:
    """Raises a clear error unless `schema` is a JSON schema (draft 2020-12 meta-schema)."""
    import jsonschema  # a validation library, imported when a schema is actually sent

    if not isinstance(schema, dict):
        raise PydanticCustomError(
            "invalid_schema", "{what} must be a JSON schema object", {"what": what}
        )
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise PydanticCustomError(
            "invalid_schema",
            "{what} is not a valid JSON schema{at}: {reason}",
            {"what": what, "at": f" (at '{where}')" if where else "", "reason": exc.message},
        ) from None


class FunctionDefinition(_Lenient):
    """A function the model may call; `parameters` is the JSON schema of its arguments."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters_schema(cls, value: Any) -> Any:
        if value is None:
            return None
        _check_json_schema(value, what="the function's parameters")
        kind = value.get("type", "object")
        if kind != "object":
            raise PydanticCustomError(
                "invalid_schema",
                "a function's parameters must be a JSON schema of type 'object', not '{kind}'",
                {"kind": kind},
            )
        return value


def _function_tool_only(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "function":
        raise PydanticCustomError(
            "tool_type",
            "only function tools are supported, not '{kind}'",
            {"kind": value.get("type")},
        )
    return value


class ChatTool(_Lenient):
    """A chat `tools` entry: `{"type": "function", "function": {...}}` (function tools only)."""

    type: Literal["function"]
    function: FunctionDefinition


class ToolCallFunction(_Lenient):
    name: str
    arguments: str  # a JSON text, as OpenAI sends it


class ToolCall(_Lenient):
    """A tool call of an assistant message: in a response, and in the history sent back."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


ToolChoiceMode = Literal["none", "auto", "required"]


def _tool_choice_shape(value: Any) -> Any:
    """One clear message for a wrong `tool_choice` instead of one per union member."""
    if value is None or value in ("none", "auto", "required") or isinstance(value, dict):
        return value
    raise PydanticCustomError(
        "tool_choice",
        "tool_choice must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
    )


ChatToolChoice = Annotated[ToolChoiceMode | NamedToolChoice, BeforeValidator(_tool_choice_shape)]


def check_tool_choice(choice: str | None, names: list[str] | None) -> None:
    """`tool_choice` against the declared tools: a named function must be one of them."""
    if choice is None or choice in ("none", "auto"):
        return
    if not names:
        raise PydanticCustomError(
            "tool_choice", "tool_choice '{choice}' needs 'tools'", {"choice": choice}
        )
    if choice != "required" and choice not in names:
        raise PydanticCustomError(
            "tool_choice",
            "tool_choice names the function '{name}', which is not among the tools ({names})",
            {"name": choice, "names": ", ".join(names)},
        )


def check_tool_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PydanticCustomError(
                "duplicate_tool", "two tools are named '{name}'", {"name": name}
            )
        seen.add(name)


class JSONSchemaFormat(_Lenient):
    """`response_format.json_schema` (chat): the schema the answer must satisfy."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)

    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None

    @field_validator("schema_", mode="before")
    @classmethod
    def _valid_schema(cls, value: Any) -> Any:
        _check_json_schema(value, what="response_format's schema")
        return value


class ResponseFormat(_Lenient):
    """`response_format`: free text, any JSON object, or JSON that satisfies a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError(
                "missing_schema", "response_format of type 'json_schema' needs 'json_schema'"
            )
        return self


def _logit_bias(value: Any) -> Any:
    """Keys are token ids (JSON object keys, so strings); values -100..100."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PydanticCustomError("logit_bias", "logit_bias must map token ids to biases")
    if len(value) > MAX_LOGIT_BIAS:
        raise PydanticCustomError(
            "logit_bias", "logit_bias holds at most {n} entries", {"n": MAX_LOGIT_BIAS}
        )
    out: dict[str, float] = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise PydanticCustomError(
                "logit_bias", "logit_bias keys are token ids, not '{key}'", {"key": key}
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise PydanticCustomError(
                "logit_bias",
                "the bias of token {key} must be a number from -100 to 100",
                {"key": key},
            )
        out[key] = float(bias)
    return out


_LOGIT_BIAS_SCHEMA: dict[str, Any] = {  # what `_logit_bias` enforces, for the OpenAPI schema
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            "maxProperties": MAX_LOGIT_BIAS,
        },
        {"type": "null"},
    ],
    "title": "Logit Bias",
    "description": "Token id (a string of digits, within the model's vocabulary) -> bias.",
}
LogitBias = Annotated[
    dict[str, float] | None, BeforeValidator(_logit_bias), WithJsonSchema(_LOGIT_BIAS_SCHEMA)
]


_UNSUPPORTED = {  # known request fields this node cannot honour, and why
    "functions": "the deprecated 'functions' is not supported: send 'tools'",
    "function_call": "the deprecated 'function_call' is not supported: send 'tool_choice'",
    "audio": "audio output is not supported: this model produces text only",
    "background": "background responses are not supported",
    "conversation": "conversations are not supported: send previous_response_id or the input",
    "prompt": "stored prompt templates are not supported",
    "web_search_options": "web search is not supported: this node has no tools of its own",
    "moderation": "moderation policies are not supported",
    "suffix": "suffix (text insertion) is not supported",
}


def _reject_unsupported(value: Any, info: ValidationInfo) -> None:
    if value is not None:
        message = _UNSUPPORTED.get(info.field_name or "", "this field is not supported")
        raise PydanticCustomError("unsupported", message)


# A known field this node cannot honour: absent or null, else a clear 400 (see _UNSUPPORTED).
Unsupported = Annotated[
    None, BeforeValidator(_reject_unsupported), WithJsonSchema({"type": "null"})
]


def _text_modality(value: Any) -> Any:
    if value is None or (isinstance(value, list) and all(v == "text" for v in value)):
        return value
    raise PydanticCustomError(
        "text_only", "this model produces text only: 'modalities' may only be ['text']"
    )


# --------------------------------------------------------------------------- logprobs


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """A chat choice's `logprobs` (and a stream chunk's, for the tokens it carries)."""

    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """A legacy completion choice's `logprobs`: parallel arrays, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


# --------------------------------------------------------------------------- chat


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


def _json_kind(value: Any) -> str:
    """Picks the member of a `str | list[...] | None` union up front, so a bad value gets the
    error of the member it was meant for instead of one error per member."""
    if value is None:
        return "none"
    return "list" if isinstance(value, list) else "str"


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


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: `chatcmpl-…`, `cmpl-…`, `resp-…`."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _now() -> int:
    return int(time.time())


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


# --------------------------------------------------------------------------- completions


Prompt = Annotated[str, Field(min_length=1)]  # an empty prompt has no token to start from


class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=1)]
    max_tokens: MaxTokens | None = 16  # the OpenAI default for legacy completions
    n: Annotated[int, Field(ge=1, le=MAX_N), Number] = 1
    best_of: Annotated[int, Field(ge=1, le=1), Number] | None = None  # n > 1 is the way
    echo: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    suffix: Unsupported = None
    user: str | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS), Number] | None = None
    logit_bias: LogitBias = None

    @model_validator(mode="after")
    def _no_prompt_logprobs(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise PydanticCustomError(
                "unsupported", "echo with logprobs (prompt logprobs) is not supported"
            )
        return self

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --------------------------------------------------------------------------- embeddings


MAX_EMBEDDING_INPUTS = 2048  # the OpenAI limit
MAX_TOKEN_ID = (1 << 31) - 1  # llama.cpp tokens are int32; the model's vocabulary decides further

_TOKEN_ARRAY: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID},
    "minItems": 1,
}
_EMBEDDING_INPUT_SCHEMA: dict[str, Any] = {  # what `_embedding_input` enforces
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": MAX_EMBEDDING_INPUTS,
        },
        _TOKEN_ARRAY,
        {"type": "array", "items": _TOKEN_ARRAY, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
    ],
    "title": "Input",
    "description": "A string, a list of strings, a token array, or a list of token arrays; "
    f"never empty, at most {MAX_EMBEDDING_INPUTS} inputs, each within the model's context.",
}


def _embedding_input(value: Any) -> Any:
    """A string, a list of strings, a token array or a list of token arrays; never empty."""

    def bad(message: str) -> PydanticCustomError:
        return PydanticCustomError("embedding_input", message)

    def token(t: Any) -> bool:  # an integer, also as JSON may write it (`7.0`), as for every int
        whole = isinstance(t, int) or (isinstance(t, float) and t.is_integer())
        return whole and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID

    def tokens(array: list[Any]) -> bool:
        return all(token(t) for t in array)

    if isinstance(value, str):
        if not value:
            raise bad("input must not be an empty string")
        return value
    if not isinstance(value, list) or not value:
        raise bad("input must be a string, a list of strings, or token arrays, and not empty")
    if tokens(value):
        return [int(t) for t in value]  # one token array: its length is the context's to bound
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise bad(f"input holds at most {MAX_EMBEDDING_INPUTS} items")
    if all(isinstance(item, str) for item in value):
        if not all(value):
            raise bad("input must not hold an empty string")
        return value
    if all(isinstance(item, list) and item and tokens(item) for item in value):
        return [[int(t) for t in item] for item in value]
    raise bad(
        "input must be a string, a list of strings, a token array (integers from 0 to "
        f"{MAX_TOKEN_ID}) or a list of non-empty token arrays"
    )


class EmbeddingRequest(_RequestBody):
    model: str | None = None
    input: Annotated[
        str | list[str] | list[int] | list[list[int]],
        BeforeValidator(_embedding_input),
        WithJsonSchema(_EMBEDDING_INPUT_SCHEMA),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), Number] | None = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: strings, or token arrays."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and all(isinstance(t, int) for t in self.input):
            return [self.input]  # type: ignore[return-value]  # one token array
        return self.input  # type: ignore[return-value]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --------------------------------------------------------------------------- Responses API


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


# --------------------------------------------------------------------------- models list


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "llamanet"
    nodes: int = 1
    n_ctx: int | None = None
    capabilities: list[str] = Field(default_factory=list)  # served by at least one node


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------- native API


def _prompt_or_messages_rule(schema: dict[str, Any]) -> None:
    """`_prompt_or_messages` in the JSON schema."""
    schema["oneOf"] = [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]


class StreamingRequest(ChoiceFields):
    """Native request for `/generate` and `/generate/stream`: a prompt or chat messages, with
    the chat request's answer-shaping fields (`n`, `response_format`, `tools`, `logprobs`, ...),
    honoured the same way; tools need `messages`."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_prompt_or_messages_rule)

    model: str | None = None
    prompt: Prompt | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    max_tokens: MaxTokens | None = 256
    temperature: Temperature = 0.7
    top_p: TopP = 0.9
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0), Number] = 1.1

    @field_validator("messages")
    @classmethod
    def _tool_results_answer_calls(
        cls, messages: list[ChatMessage] | None
    ) -> list[ChatMessage] | None:
        check_tool_results(messages or [])
        return messages

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> StreamingRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and self.tools:
            raise PydanticCustomError("tools", "tools need 'messages', not a 'prompt'")
        return self


class NativeChoice(BaseModel):
    """One of the `n` answers of a native request (`GenerateResponse.choices`)."""

    index: int
    text: str
    finish_reason: ChatFinishReason
    tokens_generated: int
    tool_calls: list[ToolCall] | None = None
    logprobs: list[ChatTokenLogprob] | None = None


class StreamingChunk(BaseModel):
    """One event of `/generate/stream`. With `n` > 1, `choice` says which answer it belongs to
    (each answer ends with its own `finished` chunk); tool calls stream as `tool_calls` deltas
    (as in OpenAI's chat chunks), logprobs per chunk when asked for."""

    text: str
    index: int
    finished: bool = False
    finish_reason: ChatFinishReason | None = None
    node_id: str
    usage: Usage | None = None
    tokens_per_second: float | None = None
    ttft_ms: float | None = None
    choice: int = 0
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[ChatTokenLogprob] | None = None


class GenerateResponse(BaseModel):
    """`/generate`'s answer: the first (or only) answer at the top level, every answer in
    `choices` when `n` > 1; `usage` counts the prompt once and every answer's tokens."""

    text: str
    tokens_generated: int
    finish_reason: ChatFinishReason
    usage: Usage
    node_id: str
    model: str
    tokens_per_second: float
    ttft_ms: float
    generation_time: float
    tool_calls: list[ToolCall] | None = None
    logprobs: list[ChatTokenLogprob] | None = None
    choices: list[NativeChoice] | None = None


# --------------------------------------------------------------------------- node state


class ModelInfo(BaseModel):
    id: str
    n_ctx: int
    quantization: str | None = None
    # what a node serves of the model: "chat", "completions", "embeddings", "tools", ...
    capabilities: list[str] = Field(default_factory=list)
    # short sha256 of the GGUF file and the llama.cpp runtime: a stream resumes only on a node
    # where both are the same
    fingerprint: str | None = None
    runtime: str | None = None


class NodeStatus(BaseModel):
    node_id: str
    models: list[str]
    load: float
    active: int
    queued: int
    capacity: int
    queue_size: int
    tokens_per_second: float
    ttft_ms: float
    uptime_s: float
    requests_total: int
    requests_completed: int
    requests_cancelled: int
    requests_failed: int
    requests_rejected: int
    requests_forwarded: int = 0
    tokens_generated: int
    slots: int = 0  # sequences the engine batches together (--parallel)
    slots_busy: int = 0
    aggregate_tokens_per_second: float = 0.0  # every stream together, while generating
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0  # prompt tokens whose KV was already there (prefix reuse)
    prefix_cache_hits: int = 0
    decode_steps: int = 0
    batch_tokens: int = 0  # tokens in the last llama_decode batch


class NodeInfo(BaseModel):
    node_id: str
    version: str
    url: str
    models: list[ModelInfo]
    model_path: str | None = None
    n_threads: int | None = None
    parallel: int | None = None
    n_gpu_layers: int = 0  # layers offloaded to a GPU (-1: all); 0 on a CPU-only build
    gpu_offload_supported: bool = False
    started_at: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class NodeRecord(BaseModel):
    """What a node publishes in the DHT; `signature` covers every other field.

    `public_key` and `signature` are hex; `ttl` is seconds of life left when the record was
    issued (peers exchange remaining ttl, so no synchronized clocks are needed).
    """

    node_id: str
    public_key: str
    url: str
    models: list[ModelInfo] = Field(default_factory=list)
    load: float = 0.0
    active: int = 0
    queued: int = 0
    capacity: int = 1
    slots: int = 0  # batched sequences: a node with active < slots starts a request at once
    tokens_per_second: float = 0.0
    ttft_ms: float = 0.0
    version: str
    started_at: float
    seq: int
    issued_at: float
    ttl: float
    withdrawn: bool = False  # a tombstone: the node left; replaces its earlier records at once
    swarm: str = (
        ""  # public id of a private swarm (see llamanet.swarm.membership); "" = the open swarm
    )
    signature: str = ""

    def serves(self, model: str | None) -> bool:
        return model is None or any(m.id == model for m in self.models)

    def n_ctx_for(self, model: str | None) -> int | None:
        for info in self.models:
            if model is None or info.id == model:
                return info.n_ctx
        return None


class NodeList(BaseModel):
    """`GET /nodes`: the live records this node knows (itself included)."""

    nodes: list[NodeRecord]
