"""What goes into the engine and what comes out of it: sampling parameters, stream items, results,
counters and the errors a request can meet. Plain data, no llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ContextLengthExceeded",
    "EngineClosed",
    "EngineError",
    "EngineStats",
    "GenerationFailed",
    "GenerationResult",
    "Piece",
    "QueueFull",
    "SamplingParams",
    "TokenLogprob",
    "TopLogprob",
]


class EngineError(Exception):
    """Base of the errors a request can meet in the engine."""


class QueueFull(EngineError):
    def __init__(self, retry_after: int) -> None:
        super().__init__("the node's request queue is full; retry later")
        self.retry_after = retry_after


class ContextLengthExceeded(EngineError):
    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens, but {prompt_tokens} prompt "
            f"tokens plus max_tokens={max_tokens} were requested ({prompt_tokens + max_tokens})."
        )
        self.prompt_tokens, self.max_tokens, self.n_ctx = prompt_tokens, max_tokens, n_ctx


class GenerationFailed(EngineError):
    """The model raised while generating."""


class EngineClosed(EngineError):
    def __init__(self) -> None:
        super().__init__("the engine is shutting down")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF, root rule "root": structured output and forced tool calls
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob + the top k


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives (OpenAI shape)."""

    token: str
    token_id: int
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Piece:
    """A stretch of generated output: the text now safe to send and the tokens generated since
    the previous piece. `token_ids` may cover text still held back (a possible stop sequence or
    an incomplete UTF-8 character); replaying the same ids reproduces the same held-back state,
    which is what lets another node resume a stream exactly.

    `replayed`: a piece of the resumed tokens (`resume_tokens`), which another node generated
    and already sent. A resumed job yields them first, one per token that released text, with
    the text that node released for it (held-back text included where it was released; the ids
    left, whose text is still held back, in one without text), so a consumer can bring its own
    state (a tool-call parser, the count of chunks sent) to where that node's was; they are not
    to be sent again. Their `logprobs` are empty."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    replayed: bool = False


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_second: float
    queue_ms: float
    duration_s: float
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens_reused: int = 0


@dataclass
class EngineStats:
    active: int = 0  # sequences holding a slot
    queued: int = 0  # admitted requests waiting for a slot
    requests_total: int = 0
    requests_completed: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    requests_rejected: int = 0
    tokens_generated: int = 0
    tokens_per_second: float = 0.0  # per stream (moving average)
    aggregate_tokens_per_second: float = 0.0  # all streams together, while any is generating
    ttft_ms: float = 0.0
    request_seconds: float = 0.0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
    prefix_cache_hits: int = 0
    decode_steps: int = 0
    batch_tokens: int = 0  # tokens in the last llama_decode batch
    slot_moves: int = 0  # sequences moved next to the others (the scheduler's `_compact`)

    @property
    def held(self) -> int:
        """Requests the engine holds: running or waiting for a slot."""
        return self.active + self.queued
