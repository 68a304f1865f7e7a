"""Log probabilities as chat and legacy completions return them, and their limits.

Chat's per-token form (`ChatLogprobs`) is also the native API's; the legacy completion form is
parallel arrays. The Responses API's form differs slightly and lives in `_responses`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "MAX_COMPLETION_LOGPROBS",
    "MAX_TOP_LOGPROBS",
    "ChatLogprobs",
    "ChatTokenLogprob",
    "ChatTopLogprob",
    "CompletionLogprobs",
]


MAX_TOP_LOGPROBS = 20  # chat `top_logprobs` (the OpenAI limit)
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs` (the OpenAI limit)


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
