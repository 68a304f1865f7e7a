"""Server-Sent Event streams for the three stream formats (OpenAI chat, OpenAI completion, native).

Each format's fixed JSON (id, created, model, node) is rendered once per stream; per token only
the text is JSON-escaped. Framing goes through FastAPI's `fastapi.sse.format_sse_event`.

For stream resumption (`llamanet.swarm.resume`): asked for, each text chunk carries the token
ids generated since the previous one (`llamanet_token_ids`; ids of pieces whose text is held
back ride on the next text chunk, so delivered text and delivered ids always match); a resumed
stream keeps the id/created (or native index) it was given and sends no role chunk; and while
no piece comes (queued, long prefill) a keep-alive comment goes out every `keepalive` seconds,
so a relay can tell a silent stream from a dead node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import format_sse_event

from llamanet.node.engine import GenerationResult, Job, Piece
from llamanet.node.engine_api import Engine
from llamanet.node.errors import stream_error_body
from llamanet.protocol import Usage, new_id
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
    """How one stream format spells its chunks."""

    def first(self) -> bytes | None:
        return None

    def text(self, text: str, token_ids: list[int] | None = None) -> bytes:
        raise NotImplementedError

    def finish(self, result: GenerationResult, include_usage: bool) -> list[bytes]:
        raise NotImplementedError

    def done(self) -> bytes | None:
        return DONE


class _OpenAIFormat(ChunkFormat):
    object_name = ""
    id_prefix = ""

    def __init__(self, model: str, *, stream_id: str | None = None, created: int | None = None):
        self.id = stream_id or new_id(self.id_prefix)
        head = {
            "id": self.id,
            "object": self.object_name,
            "created": created if created is not None else int(time.time()),
            "model": model,
        }
        self._head = json.dumps(head, separators=(",", ":"))[:-1]  # without the closing brace

    def _chunk(self, choice: str, usage: str = "") -> bytes:
        return sse(f'{self._head},"choices":[{choice}]{usage}}}')

    def _text_chunk(self, choice: str, token_ids: list[int] | None) -> bytes:
        return self._chunk(choice, _ids_field(token_ids))

    def _usage_chunk(self, result: GenerationResult) -> bytes:
        usage = usage_of(result).model_dump_json()
        return sse(f'{self._head},"choices":[],"usage":{usage}}}')


class ChatFormat(_OpenAIFormat):
    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def first(self) -> bytes:
        return self._chunk(
            '{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}'
        )

    def text(self, text: str, token_ids: list[int] | None = None) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        return self._text_chunk(
            f'{{"index":0,"delta":{{"content":{content}}},"logprobs":null,"finish_reason":null}}',
            token_ids,
        )

    def finish(self, result: GenerationResult, include_usage: bool) -> list[bytes]:
        out = [
            self._chunk(
                f'{{"index":0,"delta":{{}},"logprobs":null,'
                f'"finish_reason":"{result.finish_reason}"}}'
            )
        ]
        if include_usage:
            out.append(self._usage_chunk(result))
        return out


class CompletionFormat(_OpenAIFormat):
    object_name = "text_completion"
    id_prefix = "cmpl"

    def text(self, text: str, token_ids: list[int] | None = None) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        return self._text_chunk(
            f'{{"index":0,"text":{content},"logprobs":null,"finish_reason":null}}', token_ids
        )

    def finish(self, result: GenerationResult, include_usage: bool) -> list[bytes]:
        out = [
            self._chunk(
                f'{{"index":0,"text":"","logprobs":null,"finish_reason":"{result.finish_reason}"}}'
            )
        ]
        if include_usage:
            out.append(self._usage_chunk(result))
        return out


class NativeFormat(ChunkFormat):
    """`StreamingChunk` events of `/generate/stream`."""

    def __init__(self, node_id: str, *, index: int = 0) -> None:
        self.node_id = json.dumps(node_id)
        self.index = index

    def text(self, text: str, token_ids: list[int] | None = None) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        chunk = sse(
            f'{{"text":{content},"index":{self.index},"finished":false,'
            f'"finish_reason":null,"node_id":{self.node_id}{_ids_field(token_ids)}}}'
        )
        self.index += 1
        return chunk

    def finish(self, result: GenerationResult, include_usage: bool) -> list[bytes]:
        return [
            sse_json(
                {
                    "text": "",
                    "index": self.index,
                    "finished": True,
                    "finish_reason": result.finish_reason,
                    "node_id": json.loads(self.node_id),
                    "usage": usage_of(result).model_dump(),
                    "tokens_per_second": round(result.tokens_per_second, 2),
                    "ttft_ms": round(result.ttft_ms, 2),
                }
            )
        ]


def _ids_field(token_ids: list[int] | None) -> str:
    if token_ids is None:
        return ""
    return f',"{TOKEN_IDS_FIELD}":{json.dumps(token_ids, separators=(",", ":"))}'


async def _with_keepalive(
    items: AsyncIterator[Piece | GenerationResult], every: float | None
) -> AsyncIterator[Piece | GenerationResult | None]:
    """`items`, with a None after each `every` seconds of waiting for the next one. The wait
    is one task per item, never cancelled by a keep-alive (cancelling it would end `items`)."""
    if every is None:
        async for item in items:
            yield item
        return
    iterator = aiter(items)
    try:
        while True:
            pending = asyncio.ensure_future(anext(iterator))
            try:
                while True:
                    done, _ = await asyncio.wait({pending}, timeout=every)
                    if done:
                        break
                    yield None
            finally:
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await pending
            try:
                yield pending.result()
            except StopAsyncIteration:
                return
    finally:
        closing = getattr(iterator, "aclose", None)
        if closing is not None:
            await closing()


async def event_stream(
    engine: Engine,
    job: Job,
    fmt: ChunkFormat,
    *,
    include_usage: bool = False,
    on_result: Any = None,
    timeout: float | None = None,
    token_ids: bool = False,
    resumed: bool = False,
    keepalive: float | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of one request. An error after the start is one error event, then the end.

    `token_ids`: text chunks carry their token ids; `resumed`: the continuation of a stream
    begun elsewhere (no role chunk); `keepalive`: seconds of silence before a keep-alive."""
    first = None if resumed else fmt.first()
    if first is not None:
        yield first
    ids: list[int] = []  # generated since the last text chunk
    try:
        async with asyncio.timeout(timeout):
            async for item in _with_keepalive(engine.stream(job), keepalive):
                if item is None:
                    yield KEEPALIVE
                elif isinstance(item, Piece):
                    ids.extend(item.token_ids)
                    if item.text:
                        yield fmt.text(item.text, ids if token_ids else None)
                        ids = []
                else:
                    if on_result is not None:
                        on_result(item)
                    for chunk in fmt.finish(item, include_usage):
                        yield chunk
    except Exception as exc:  # surfaced to the client, never a silent truncation
        yield sse_json(stream_error_body(exc))
        return
    done = fmt.done()
    if done is not None:
        yield done
