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
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

NODE_HEADER = "X-LlamaNet-Node"  # every response names the node that served it

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_TOKENS_LIMIT = 1 << 20  # far beyond any context; a request above it is malformed, not long

FinishReason = Literal["stop", "length"]


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


class SamplingFields(_Lenient):
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

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _invalid_text(data)
        if where:
            raise ValueError(f"'{where}' is not valid Unicode text (it holds a lone surrogate)")
        return data

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


# --------------------------------------------------------------------------- chat


class TextContentPart(_Lenient):
    type: Literal["text"]
    text: str


def _content_rule(schema: dict[str, Any]) -> None:
    """`_content_required` in the JSON schema: only an assistant message may lack content."""
    schema["anyOf"] = [
        {"properties": {"role": {"const": "assistant"}}},
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
    ]


class ChatMessage(_Lenient):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_content_rule)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

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
        return self


class ChatCompletionRequest(SamplingFields):
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    n: Annotated[int, Field(ge=1, le=1), Number] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: FinishReason | None
    logprobs: None = None


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


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


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
    n: Annotated[int, Field(ge=1, le=1), Number] = 1
    echo: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    suffix: None = None
    user: str | None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --------------------------------------------------------------------------- models list


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "llamanet"
    nodes: int = 1
    n_ctx: int | None = None


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


class StreamingRequest(SamplingFields):
    """Native request for `/generate` and `/generate/stream`: a prompt or chat messages."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_prompt_or_messages_rule)

    model: str | None = None
    prompt: Prompt | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    max_tokens: MaxTokens | None = 256
    temperature: Temperature = 0.7
    top_p: TopP = 0.9
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0), Number] = 1.1

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> StreamingRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class StreamingChunk(BaseModel):
    """One event of `/generate/stream`."""

    text: str
    index: int
    finished: bool = False
    finish_reason: FinishReason | None = None
    node_id: str
    usage: Usage | None = None
    tokens_per_second: float | None = None
    ttft_ms: float | None = None


class GenerateResponse(BaseModel):
    text: str
    tokens_generated: int
    finish_reason: FinishReason
    usage: Usage
    node_id: str
    model: str
    tokens_per_second: float
    ttft_ms: float
    generation_time: float


# --------------------------------------------------------------------------- node state


class ModelInfo(BaseModel):
    id: str
    n_ctx: int
    quantization: str | None = None


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
