"""Log-probabilities from the engine's `TokenLogprob`s into the OpenAI shapes (chat items,
completions' parallel arrays, Responses items), validated by the `openai` SDK's types."""

from __future__ import annotations

import math

import openai.types.chat as sdk_chat
import openai.types.completion_choice as sdk_choice
from openai.types.responses.response_output_text import Logprob as SDKResponsesLogprob

from llamanet.node.engine import TokenLogprob, TopLogprob
from llamanet.node.logprobs import (
    UNLIKELY,
    chat_logprobs,
    completion_logprobs,
    responses_logprobs,
)

ITEMS = [
    TokenLogprob(
        token="Hel",
        token_id=1,
        logprob=-0.25,
        bytes=(72, 101, 108),
        top=(
            TopLogprob(token="Hel", logprob=-0.25, bytes=(72, 101, 108)),
            TopLogprob(token="Hi", logprob=-1.5, bytes=(72, 105)),
        ),
    ),
    TokenLogprob(
        token="lo",
        token_id=2,
        logprob=-math.inf,  # a token the sampler ruled out (a grammar, a bias of -100)
        bytes=(108, 111),
        top=(
            TopLogprob(token="lo", logprob=-0.5, bytes=(108, 111)),
            TopLogprob(token="lo", logprob=-3.0, bytes=(108, 111)),  # another id, same text
        ),
    ),
]


def test_chat_logprobs_parse_in_the_sdk() -> None:
    logprobs = chat_logprobs(ITEMS)
    parsed = sdk_chat.chat_completion.ChoiceLogprobs.model_validate(logprobs.model_dump())
    assert parsed.content is not None
    first, second = parsed.content
    assert (first.token, first.logprob, first.bytes) == ("Hel", -0.25, [72, 101, 108])
    assert [t.token for t in first.top_logprobs] == ["Hel", "Hi"]
    assert second.logprob == UNLIKELY  # JSON has no -inf


def test_completion_logprobs_are_parallel_arrays_with_offsets() -> None:
    logprobs = completion_logprobs(ITEMS, offset=4)
    assert logprobs.tokens == ["Hel", "lo"]
    assert logprobs.token_logprobs == [-0.25, UNLIKELY]
    assert logprobs.top_logprobs == [{"Hel": -0.25, "Hi": -1.5}, {"lo": -0.5}]
    assert logprobs.text_offset == [4, 7]
    choice = {
        "index": 0,
        "text": "Hello",
        "finish_reason": "stop",
        "logprobs": logprobs.model_dump(),
    }
    assert sdk_choice.CompletionChoice.model_validate(choice).logprobs is not None


def test_responses_logprobs_parse_in_the_sdk() -> None:
    for item in responses_logprobs(ITEMS):
        parsed = SDKResponsesLogprob.model_validate(item.model_dump())
        assert parsed.bytes and parsed.top_logprobs


def test_no_top_logprobs() -> None:
    bare = [TokenLogprob(token="a", token_id=3, logprob=-1.0, bytes=(97,))]
    assert chat_logprobs(bare).model_dump()["content"][0]["top_logprobs"] == []
    assert completion_logprobs(bare).top_logprobs == [{}]
