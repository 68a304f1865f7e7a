"""Legacy completions (`POST /v1/completions`): the request, the answer, its choices."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, model_validator
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import (
    FinishReason,
    Number,
    StreamOptions,
    Unsupported,
    Usage,
    _now,
    new_id,
)
from llamanet.protocol._logprobs import MAX_COMPLETION_LOGPROBS, CompletionLogprobs
from llamanet.protocol._sampling import MAX_N, LogitBias, MaxTokens, SamplingFields

__all__ = ["Completion", "CompletionChoice", "CompletionRequest", "Prompt"]


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
