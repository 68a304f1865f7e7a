"""The native API (`/generate`, `/generate/stream`): a prompt or messages in, an answer or chunks.

Built on chat's `ChoiceFields` and messages, so a native request is honoured the same way;
the native shapes are LlamaNet's own (the original streaming plan), not OpenAI's.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from llamanet.protocol._chat import (
    ChatFinishReason,
    ChatMessage,
    ChoiceFields,
    ToolCallDelta,
    check_tool_results,
)
from llamanet.protocol._common import Number, Usage
from llamanet.protocol._completions import Prompt
from llamanet.protocol._logprobs import ChatTokenLogprob
from llamanet.protocol._sampling import MaxTokens, Temperature, TopP
from llamanet.protocol._tools import ToolCall

__all__ = ["GenerateResponse", "NativeChoice", "StreamingChunk", "StreamingRequest"]


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
