"""Log-probabilities in the OpenAI shapes, from the engine's `TokenLogprob`s.

Chat (and the Responses API) use a list of `{token, logprob, bytes, top_logprobs}` items; legacy
completions use parallel arrays (`tokens`, `token_logprobs`, `top_logprobs` as
`{token: logprob}` maps, `text_offset`). A log-probability too small for a float (`-inf`, a
token the sampler ruled out) is reported as -9999.0, the value OpenAI documents for "very
unlikely", since JSON has no infinity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llamanet.node.engine import TokenLogprob, TopLogprob
from llamanet.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionLogprobs,
    ResponsesTokenLogprob,
    ResponsesTopLogprob,
)

__all__ = [
    "UNLIKELY",
    "chat_logprob_items",
    "chat_logprobs",
    "completion_logprobs",
    "responses_logprobs",
]

UNLIKELY = -9999.0


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNLIKELY


def _top(top: TopLogprob) -> ChatTopLogprob:
    return ChatTopLogprob(token=top.token, logprob=_finite(top.logprob), bytes=list(top.bytes))


def chat_logprob_items(items: Sequence[TokenLogprob]) -> list[ChatTokenLogprob]:
    """`choices[i].logprobs.content` items (for a whole answer or one stream chunk)."""
    return [
        ChatTokenLogprob(
            token=item.token,
            logprob=_finite(item.logprob),
            bytes=list(item.bytes),
            top_logprobs=[_top(top) for top in item.top],
        )
        for item in items
    ]


def chat_logprobs(items: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=chat_logprob_items(items))


def responses_logprobs(items: Sequence[TokenLogprob]) -> list[ResponsesTokenLogprob]:
    """`output_text.logprobs` (and the `logprobs` of `response.output_text.delta` events)."""
    return [
        ResponsesTokenLogprob(
            token=item.token,
            logprob=_finite(item.logprob),
            bytes=list(item.bytes),
            top_logprobs=[
                ResponsesTopLogprob(
                    token=top.token, logprob=_finite(top.logprob), bytes=list(top.bytes)
                )
                for top in item.top
            ],
        )
        for item in items
    ]


def completion_logprobs(items: Sequence[TokenLogprob], *, offset: int = 0) -> CompletionLogprobs:
    """A completion choice's `logprobs`; `offset` is where the first token's text starts in
    the choice's text (non-zero for a stream chunk after the first, or with `echo`)."""
    out = CompletionLogprobs()
    for item in items:
        out.tokens.append(item.token)
        out.token_logprobs.append(_finite(item.logprob))
        top: dict[str, float] = {}
        for alternative in item.top:  # two ids may spell the same text: keep the likelier
            value = _finite(alternative.logprob)
            top[alternative.token] = max(value, top.get(alternative.token, UNLIKELY))
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(item.token)
    return out
