"""Server-Sent Event streams for the three chunk formats (OpenAI chat, OpenAI completion,
native), written from a request's choice events (`llamanet.node.choices`).

Each format's fixed JSON (id, created, model) is rendered once per stream; per event only the
choice is serialised. Framing goes through FastAPI's `fastapi.sse.format_sse_event`. The
Responses API has its own event sequence (`llamanet.node.responses`).

For stream resumption (`llamanet.swarm.resume`): asked for (`token_ids`), each text and
tool-call chunk, and only those, carries the token ids generated since the previous one
(`llamanet_token_ids`, from `ChoiceText.token_ids` / `ChoiceCall.token_ids`: ids of pieces whose
text is held back ride on the next such chunk, so the delivered ids always cover the delivered
text; the field may be empty, e.g. on the second call event of one piece or on text released at
the end of the generation; a relay counts these chunks, empty or not, and a resumed stream sends
none of that many, `llamanet.node.choices`); a resumed stream (`resume`) keeps the id/created
(or native index) it was given and sends no role chunk (`start()` sends nothing); and while no
event comes (queued, long prefill) a keep-alive comment goes out every `keepalive` seconds, so a
relay can tell a silent stream from a dead node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi.sse import format_sse_event

from llamanet.node.choices import ChoiceCall, ChoiceEnd, ChoiceEvent, ChoiceText, total_usage
from llamanet.node.engine import GenerationResult, TokenLogprob
from llamanet.node.errors import stream_error_body
from llamanet.node.logprobs import chat_logprob_items, chat_logprobs, completion_logprobs
from llamanet.node.read_ahead import SILENT, read_ahead
from llamanet.protocol import ResumeFrom, Usage, new_id
from llamanet.swarm.resume import TOKEN_IDS_FIELD

DONE = format_sse_event(data_str="[DONE]")
KEEPALIVE = b": keep-alive\n\n"


def sse(payload: str) -> bytes:
    return format_sse_event(data_str=payload)


def sse_json(obj: Any) -> bytes:
    return sse(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def usage_of(result: GenerationResult) -> Usage:
    """The token counts of a generation, as every response and stream reports them."""
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


class ChunkFormat:
    """How one stream format spells the events of a request's choices.

    `token_ids`: text chunks carry `llamanet_token_ids`; `resumed`: the continuation of a
    stream begun on another node (no start chunks)."""

    token_ids: bool = False
    resumed: bool = False

    def _ids(self, event: ChoiceText | ChoiceCall) -> dict[str, Any]:
        return {TOKEN_IDS_FIELD: list(event.token_ids)} if self.token_ids else {}

    def start(self) -> list[bytes]:
        return []

    def text(self, event: ChoiceText) -> bytes | None:
        raise NotImplementedError

    def call(self, event: ChoiceCall) -> bytes | None:
        raise NotImplementedError  # only formats of requests that can call tools get calls

    def end(self, event: ChoiceEnd) -> list[bytes]:
        raise NotImplementedError

    def usage(self, usage: Usage) -> bytes | None:
        """After every choice ended, when the request asked for usage."""
        return None

    def done(self) -> bytes | None:
        return DONE


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _OpenAIFormat(ChunkFormat):
    object_name = ""
    id_prefix = ""

    def __init__(
        self,
        model: str,
        *,
        n: int = 1,
        logprobs: bool = False,
        token_ids: bool = False,
        resume: ResumeFrom | None = None,
    ) -> None:
        self.id = (resume.id if resume is not None else None) or new_id(self.id_prefix)
        self.n = n
        self.logprobs = logprobs
        self.token_ids = token_ids
        self.resumed = resume is not None
        created = resume.created if resume is not None else None
        head = {
            "id": self.id,
            "object": self.object_name,
            "created": created if created is not None else int(time.time()),
            "model": model,
        }
        self._head = _dumps(head)[:-1]  # without the closing brace

    def _chunk(self, choice: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
        tail = "".join(f",{_dumps(key)}:{_dumps(value)}" for key, value in (extra or {}).items())
        return sse(f'{self._head},"choices":[{_dumps(choice)}]{tail}}}')

    def usage(self, usage: Usage) -> bytes:
        return sse(f'{self._head},"choices":[],"usage":{usage.model_dump_json()}}}')


class ChatFormat(_OpenAIFormat):
    """`chat.completion.chunk`s: a role chunk per choice, content and `tool_calls` deltas with
    their logprobs, a finish chunk per choice."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def _logprobs(self, items: tuple[TokenLogprob, ...]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return chat_logprobs(items).model_dump(exclude_none=True) if items else None

    def start(self) -> list[bytes]:
        if self.resumed:
            return []
        return [
            self._chunk(
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
            for index in range(self.n)
        ]

    def text(self, event: ChoiceText) -> bytes:
        return self._chunk(
            {
                "index": event.index,
                "delta": {"content": event.text},
                "logprobs": self._logprobs(event.logprobs),
                "finish_reason": None,
            },
            self._ids(event),
        )

    def call(self, event: ChoiceCall) -> bytes:
        return self._chunk(
            {
                "index": event.index,
                "delta": {"tool_calls": [event.delta.model_dump()]},
                "logprobs": None,
                "finish_reason": None,
            },
            self._ids(event),
        )

    def end(self, event: ChoiceEnd) -> list[bytes]:
        return [
            self._chunk(
                {
                    "index": event.index,
                    "delta": {},
                    "logprobs": self._logprobs(event.logprobs),
                    "finish_reason": event.finish_reason,
                }
            )
        ]


class CompletionFormat(_OpenAIFormat):
    """`text_completion` chunks; with `echo`, each choice starts with the prompt; logprobs in
    the legacy parallel arrays, `text_offset` counted through the choice's text."""

    object_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(
        self,
        model: str,
        *,
        n: int = 1,
        logprobs: bool = False,
        echo: str | None = None,
        token_ids: bool = False,
        resume: ResumeFrom | None = None,
    ) -> None:
        super().__init__(model, n=n, logprobs=logprobs, token_ids=token_ids, resume=resume)
        self.echo = echo
        self._offsets = [len(echo or "")] * n

    def _logprobs(self, index: int, items: tuple[TokenLogprob, ...]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        out = completion_logprobs(items, offset=self._offsets[index])
        return out.model_dump()

    def _text(
        self,
        index: int,
        text: str,
        logprobs: Any,
        finish: str | None,
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        self._offsets[index] += len(text)
        return self._chunk(
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}, extra
        )

    def start(self) -> list[bytes]:
        if not self.echo or self.resumed:  # a resumed stream echoed where it began
            return []
        return [self._text(index, self.echo, None, None) for index in range(self.n)]

    def text(self, event: ChoiceText) -> bytes:
        logprobs = self._logprobs(event.index, event.logprobs)
        return self._text(event.index, event.text, logprobs, None, self._ids(event))

    def end(self, event: ChoiceEnd) -> list[bytes]:
        logprobs = self._logprobs(event.index, event.logprobs) if event.logprobs else None
        return [self._text(event.index, "", logprobs, event.finish_reason)]


class NativeFormat(ChunkFormat):
    """`StreamingChunk` events of `/generate/stream`: `index` numbers the chunks of the
    stream; `choice` (n > 1), `tool_calls` and `logprobs` appear only when they say something;
    each choice's `finished` chunk carries its usage and speed."""

    def __init__(
        self,
        node_id: str,
        *,
        n: int = 1,
        logprobs: bool = False,
        token_ids: bool = False,
        resume: ResumeFrom | None = None,
    ) -> None:
        self.node_id = node_id
        self.n = n
        self.logprobs = logprobs
        self.token_ids = token_ids
        self.resumed = resume is not None
        self.index = resume.index if resume is not None else 0

    def _chunk(self, index: int, fields: dict[str, Any]) -> bytes:
        chunk: dict[str, Any] = {
            "text": "",
            "index": self.index,
            "finished": False,
            "finish_reason": None,
            "node_id": self.node_id,
            **fields,
        }
        if self.n > 1:
            chunk["choice"] = index
        self.index += 1
        return sse_json(chunk)

    def _logprobs(self, items: tuple[TokenLogprob, ...]) -> dict[str, Any]:
        if not self.logprobs or not items:
            return {}
        return {"logprobs": [item.model_dump() for item in chat_logprob_items(items)]}

    def text(self, event: ChoiceText) -> bytes:
        fields = {"text": event.text, **self._logprobs(event.logprobs), **self._ids(event)}
        return self._chunk(event.index, fields)

    def call(self, event: ChoiceCall) -> bytes:
        fields = {"tool_calls": [event.delta.model_dump()], **self._ids(event)}
        return self._chunk(event.index, fields)

    def end(self, event: ChoiceEnd) -> list[bytes]:
        result = event.result
        return [
            self._chunk(
                event.index,
                {
                    "finished": True,
                    "finish_reason": event.finish_reason,
                    "usage": usage_of(result).model_dump(),
                    "tokens_per_second": round(result.tokens_per_second, 2),
                    "ttft_ms": round(result.ttft_ms, 2),
                    **self._logprobs(event.logprobs),
                },
            )
        ]


async def _with_keepalive(
    events: AsyncGenerator[ChoiceEvent, None], every: float | None
) -> AsyncGenerator[ChoiceEvent | None, None]:
    """`events`, with a None after each `every` seconds of waiting for the next one (read
    ahead: `llamanet.node.read_ahead` says why)."""
    if every is None:
        async for event in events:
            yield event
        return
    async with contextlib.aclosing(read_ahead(events, every)) as items:
        async for item in items:
            yield None if item is SILENT else item  # type: ignore[misc]


async def event_stream(
    events: AsyncGenerator[ChoiceEvent, None],
    fmt: ChunkFormat,
    *,
    include_usage: bool = False,
    on_end: Callable[[ChoiceEnd], None] | None = None,
    timeout: float | None = None,
    keepalive: float | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of one request. An error after the start is one error event, then the end.
    Closing the body closes `events` (and so cancels the request's sequences). `keepalive`:
    seconds of silence before a keep-alive comment."""
    for chunk in fmt.start():
        yield chunk
    results: list[GenerationResult] = []
    try:
        async with (
            contextlib.aclosing(events),
            contextlib.aclosing(_with_keepalive(events, keepalive)) as items,
            asyncio.timeout(timeout),
        ):
            async for event in items:
                if event is None:
                    yield KEEPALIVE
                elif isinstance(event, ChoiceText):
                    out = fmt.text(event)
                    if out is not None:
                        yield out
                elif isinstance(event, ChoiceCall):
                    out = fmt.call(event)
                    if out is not None:
                        yield out
                else:
                    results.append(event.result)
                    if on_end is not None:
                        on_end(event)
                    for chunk in fmt.end(event):
                        yield chunk
            if include_usage:
                usage = fmt.usage(total_usage(results))
                if usage is not None:
                    yield usage
    except Exception as exc:  # surfaced to the client, never a silent truncation
        yield sse_json(stream_error_body(exc))
        return
    done = fmt.done()
    if done is not None:
        yield done
