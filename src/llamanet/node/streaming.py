"""Server-Sent Event streams for the three stream formats (OpenAI chat, OpenAI completion, native).

Each format's fixed JSON (id, created, model, node) is rendered once per stream; per token only
the text is JSON-escaped. Framing goes through FastAPI's `fastapi.sse.format_sse_event`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import format_sse_event

from llamanet.node.engine import GenerationResult, Job, Piece
from llamanet.node.engine_api import Engine
from llamanet.node.errors import stream_error_body
from llamanet.protocol import Usage, new_id

DONE = format_sse_event(data_str="[DONE]")


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

    def text(self, text: str) -> bytes:
        raise NotImplementedError

    def finish(self, result: GenerationResult, include_usage: bool) -> list[bytes]:
        raise NotImplementedError

    def done(self) -> bytes | None:
        return DONE


class _OpenAIFormat(ChunkFormat):
    object_name = ""
    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id = new_id(self.id_prefix)
        head = {
            "id": self.id,
            "object": self.object_name,
            "created": int(time.time()),
            "model": model,
        }
        self._head = json.dumps(head, separators=(",", ":"))[:-1]  # without the closing brace

    def _chunk(self, choice: str, usage: str = "") -> bytes:
        return sse(f'{self._head},"choices":[{choice}]{usage}}}')

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

    def text(self, text: str) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        return self._chunk(
            f'{{"index":0,"delta":{{"content":{content}}},"logprobs":null,"finish_reason":null}}'
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

    def text(self, text: str) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        return self._chunk(f'{{"index":0,"text":{content},"logprobs":null,"finish_reason":null}}')

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

    def __init__(self, node_id: str) -> None:
        self.node_id = json.dumps(node_id)
        self.index = 0

    def text(self, text: str) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        chunk = sse(
            f'{{"text":{content},"index":{self.index},"finished":false,'
            f'"finish_reason":null,"node_id":{self.node_id}}}'
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


async def event_stream(
    engine: Engine,
    job: Job,
    fmt: ChunkFormat,
    *,
    include_usage: bool = False,
    on_result: Any = None,
    timeout: float | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of one request. An error after the start is one error event, then the end."""
    first = fmt.first()
    if first is not None:
        yield first
    try:
        async with asyncio.timeout(timeout):
            async for item in engine.stream(job):
                if isinstance(item, Piece):
                    if item.text:
                        yield fmt.text(item.text)
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
