"""API fuzzing: schemathesis against a real node's `/openapi.json`, every operation, every check.

Every operation of the schema is fuzzed (examples, coverage and fuzzing phases) with all of
schemathesis' response checks: no 5xx, status codes, content types, headers and bodies as
documented, schema-valid requests accepted and schema-violating ones rejected. On top of them:
every error body has the OpenAI shape, and every event stream is well formed and ends with a
`finish_reason` chunk and `[DONE]`, or with one error event (never silently truncated).

Generation requests get `max_tokens` capped (`MAX_TOKENS`) so the 2-core CI machine finishes in
a minute or two. CI runs a bounded, derandomized number of examples per operation; a longer,
random run:

    LLAMANET_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_schemathesis.py -q

(`LLAMANET_FUZZ_SEED=<n>` replays a random run's seed.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import CHECKS
from schemathesis.engine import Status, events
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER
from schemathesis.specs.openapi.checks import positive_data_acceptance

from llamanet.protocol import (
    MAX_TOKENS_LIMIT,
    VALIDATION_CODES,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    StreamingChunk,
)

DEFAULT_EXAMPLES = 25
EXAMPLES = int(os.environ.get("LLAMANET_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
pytestmark = [pytest.mark.model, pytest.mark.timeout(900 + 10 * EXAMPLES)]  # bounded run
SEED = os.environ.get("LLAMANET_FUZZ_SEED")
MAX_TOKENS = 3
SSE_LINES = re.compile(r"\r\n|\r|\n")  # the only line ends of Server-Sent Events
GENERATION = {
    "/v1/chat/completions",
    "/v1/chat/completions/stream",
    "/v1/completions",
    "/v1/responses",
    "/generate",
    "/generate/stream",
}
RESPONSES_ENDS = {"response.completed", "response.incomplete", "error"}
CHUNK_MODELS = {
    "/v1/chat/completions": ChatCompletionChunk,
    "/v1/chat/completions/stream": ChatCompletionChunk,
    "/v1/completions": Completion,
    "/generate/stream": StreamingChunk,
}


@dataclass
class Tally:
    """What the run exercised, so that nothing is skipped silently."""

    responses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    streams: Counter[str] = field(default_factory=Counter)

    def count(self, predicate: Callable[[int], bool]) -> int:
        return sum(n for (*_, status), n in self.responses.items() if predicate(status))


TALLY = Tally()


@pytest.fixture(scope="module")
def node(start_node: Any) -> Any:
    return start_node("--model-id", "smol")


def cap_tokens(case: Any) -> None:
    """Bound the work of a generation request without changing whether it is valid: only a
    valid budget (a number in range, or null: "as many as fit") is lowered, a missing one set."""
    if case.path not in GENERATION or not isinstance(case.body, dict):
        return
    body = case.body
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        in_range = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value == int(value)
            and 1 <= value <= MAX_TOKENS_LIMIT
        )
        if in_range:
            body[name] = min(int(value), MAX_TOKENS)
        elif (name == "max_tokens" and case.path != "/v1/responses") or (
            name == "max_output_tokens" and case.path == "/v1/responses"
        ):
            if name not in body or value is None:
                body[name] = MAX_TOKENS


# 400s no schema can predict: they depend on the model (its tokenizer, context, vocabulary, size)
MODEL_DEPENDENT = {
    "context_length_exceeded",  # a prompt or embeddings input too long for the context
    "invalid_token",  # a token id (embeddings input, logit_bias) outside the vocabulary
    "unsupported_dimensions",  # embeddings `dimensions` other than the model's own
    "too_many_tokens",  # embeddings inputs beyond the per-request total
    "template_error",  # a conversation the model's chat template refuses to render
}
# ... on the node's state (stored responses), on constraints between fields or messages that
# JSON Schema cannot state (`protocol.VALIDATION_CODES`), or on what a grammar can enforce of a
# JSON schema sent in the body
UNPREDICTABLE_400 = {
    *MODEL_DEPENDENT,
    "previous_response_not_found",
    "unsupported_schema",
    "unsupported_combination",
    *VALIDATION_CODES.values(),
}


def accepts_valid_data(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' `positive_data_acceptance`, except for the 400s no schema can predict
    (`UNPREDICTABLE_400`)."""
    if response.status_code == 400:
        try:
            if response.json()["error"]["code"] in UNPREDICTABLE_400:
                return None
        except (ValueError, KeyError, TypeError):
            pass
    return positive_data_acceptance(ctx, response, case)


def openai_shaped_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error, whatever the route, is `{"error": {message, type, param, code}}`."""
    if response.status_code >= 400:
        body = ErrorResponse.model_validate(response.json())
        assert body.error.message and body.error.type
    return None


def well_formed_stream(ctx: Any, response: Any, case: Any) -> bool | None:
    """An event stream is JSON chunks of its route's format, then the last chunk with a
    `finish_reason` and `[DONE]`; or it ends with one error event. Nothing else, no truncation."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    assert response.status_code == 200 and not response.stream_cut_short
    lines = SSE_LINES.split(response.content.decode("utf-8"))  # not str.splitlines: U+2028 ...
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events, "an empty event stream"
    if case.path == "/v1/responses":
        return _well_formed_responses_stream(events)
    model = CHUNK_MODELS[case.path]
    if events[-1] != "[DONE]":  # the only other ending: one error event
        error = ErrorResponse.model_validate(json.loads(events[-1])).error
        for data in events[:-1]:
            model.model_validate(json.loads(data))
        TALLY.streams["error"] += 1
        # well formed, but nothing here should fail mid-stream: the 5xx of a stream
        raise AssertionError(f"the stream failed after it started: {error}")
    chunks = [model.model_validate(json.loads(data)) for data in events[:-1]]
    choices = {_choice(chunk) for chunk in chunks if _choice(chunk) is not None}
    for index in choices:  # each choice (n > 1) ends once, and nothing of it follows its end
        mine = [chunk for chunk in chunks if _choice(chunk) == index]
        finishes = [_finish_reason(chunk) for chunk in mine]
        ends = [i for i, reason in enumerate(finishes) if reason is not None]
        assert len(ends) == 1, f"choice {index}: expected one finish_reason, got {finishes}"
        assert not any(_has_text(chunk) for chunk in mine[ends[0] + 1 :])
    TALLY.streams["finished"] += 1
    return None


def _well_formed_responses_stream(events: list[str]) -> None:
    """The Responses event sequence: numbered from 0, `response.created` first, and one end."""
    payloads = [json.loads(data) for data in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert payloads[0]["type"] == "response.created"
    kinds = [p["type"] for p in payloads]
    assert kinds[-1] in RESPONSES_ENDS and not set(kinds[:-1]) & RESPONSES_ENDS, kinds
    if kinds[-1] == "error":
        TALLY.streams["error"] += 1
        raise AssertionError(f"the stream failed after it started: {payloads[-1]}")
    TALLY.streams["finished"] += 1


def _choice(chunk: Any) -> int | None:
    if isinstance(chunk, StreamingChunk):
        return chunk.choice
    return chunk.choices[0].index if chunk.choices else None


def _finish_reason(chunk: Any) -> str | None:
    if isinstance(chunk, StreamingChunk):
        return chunk.finish_reason if chunk.finished else None
    return chunk.choices[0].finish_reason if chunk.choices else None


def _has_text(chunk: Any) -> bool:
    if isinstance(chunk, StreamingChunk):
        return bool(chunk.text or chunk.tool_calls)
    if not chunk.choices:
        return False
    choice = chunk.choices[0]
    delta = getattr(choice, "delta", None)
    return bool(
        getattr(choice, "text", None)
        or getattr(delta, "content", None)
        or getattr(delta, "tool_calls", None)
    )


def run_schemathesis(url: str) -> tuple[list[Any], int]:
    """The whole schemathesis run (every phase, every check plus ours): failures, cases."""
    config = schemathesis.Config.from_dict(
        {
            "workers": 1,
            "request-timeout": 120,
            "max-stream-events": 1000,  # read every stream to its end: truncation is what we check
            "generation": {
                "max-examples": EXAMPLES,
                "database": "none",
                "deterministic": SEED is None and EXAMPLES == DEFAULT_EXAMPLES,
            },
            "checks": {"positive_data_acceptance": {"enabled": False}},  # `accepts_valid_data`
            **({"seed": int(SEED)} if SEED is not None else {}),
        }
    )
    loaded = schemathesis.openapi.from_url(url + "/openapi.json", config=config)
    failures: list[str] = []
    cases = 0
    with registered():
        for event in schemathesis.engine.from_schema(loaded).execute():
            if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
                cases += len(event.recorder.cases)
                failures.extend(_failures(event.recorder))
            elif isinstance(event, events.NonFatalError | events.FatalError):
                failures.append(f"schemathesis error: {event!r}")
            elif isinstance(event, events.EngineFinished):  # class-based `after_run` checks
                failures.extend(f"{f.title}: {f.message}" for f in event.failures)
    return failures, cases


def _failures(recorder: Any) -> Iterator[str]:
    """The failed checks of one scenario, each with a curl command that reproduces it."""
    for checks in recorder.checks.values():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                yield (
                    f"{recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                    f"{check.failure_info.code_sample[:2000]}"
                )


def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    cap_tokens(case)


def after_call(context: Any, case: Any, response: Any) -> None:
    TALLY.responses[(case.method.upper(), case.path, response.status_code)] += 1


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """Our hooks and checks, registered (schemathesis keeps them globally) for one run only."""
    checks = (accepts_valid_data, openai_shaped_errors, well_formed_stream)
    hooks = (before_call, after_call)
    for check in checks:
        schemathesis.check(check)
    for hook in hooks:
        schemathesis.hook(hook)
    try:
        yield
    finally:
        for hook in hooks:
            GLOBAL_HOOK_DISPATCHER.unregister(hook)
        for check in checks:
            CHECKS.unregister(check.__name__)


def test_schemathesis_finds_nothing(node: Any) -> None:
    failures, cases = run_schemathesis(node.url)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:20])
    assert cases > 0
    # nothing skipped silently: every operation got requests, generations really ran
    spec = node.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    tried = {(method, path) for method, path, _ in TALLY.responses}
    assert operations <= tried, f"never exercised: {operations - tried}"
    generated = {path for _, path, status in TALLY.responses if status == 200} & GENERATION
    statuses = {k: n for k, n in TALLY.responses.items() if k[1] not in generated}
    assert generated == GENERATION, f"no successful request on {GENERATION - generated}: {statuses}"
    assert TALLY.streams["finished"] > 0
    assert TALLY.count(lambda status: status >= 500) == 0
    # the node is idle and healthy afterwards, no generation failed
    status = node.wait_until(lambda s: s["active"] == 0 and s["queued"] == 0)
    assert status["requests_failed"] == 0
    assert node.get("/health").status_code == 200
    print(
        f"\nschemathesis: {cases} cases, {sum(TALLY.responses.values())} requests over "
        f"{len(operations)} operations: {TALLY.count(lambda s: s < 300)} 2xx, "
        f"{TALLY.count(lambda s: 400 <= s < 500)} 4xx, {TALLY.count(lambda s: s >= 500)} 5xx;"
        f" streams {dict(TALLY.streams)}"
    )
