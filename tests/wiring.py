"""Shared pieces of the wiring tests (fast tier): a node around a `FakeEngine` reached through the
official `openai` SDK (`AsyncOpenAI` on httpx's ASGI transport, no sockets), the request bodies
the SDK sent, and SSE helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from fakes import FakeEngine, serving

from llamanet.node.config import NodeSettings
from llamanet.node.engine import SamplingParams

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def pieces(text: str, size: int = 3) -> tuple[str, ...]:
    """`text` cut in pieces of `size` characters, one fake token each."""
    return tuple(text[i : i + size] for i in range(0, len(text), size))


@dataclass
class Node:
    """An in-process node, the SDK pointed at it, a raw client, and the bodies sent."""

    engine: FakeEngine
    sdk: openai.AsyncOpenAI
    http: httpx.AsyncClient
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def params(self) -> SamplingParams:
        """The parameters of the last request that reached the engine."""
        return self.engine.submitted[-1][1]

    @property
    def prompt(self) -> str:
        """The last text the engine tokenized (the rendered chat)."""
        return self.engine.tokenized[-1]


@asynccontextmanager
async def node(tmp_path: Path, engine: FakeEngine | None = None) -> AsyncIterator[Node]:
    engine = engine or FakeEngine()
    sent: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        if request.content:
            sent.append(json.loads(request.content))

    settings = NodeSettings(home=tmp_path, request_timeout=30)
    async with serving(settings, engine, event_hooks={"request": [record]}) as http:
        sdk = openai.AsyncOpenAI(
            base_url="http://node.test/v1", api_key="unused", http_client=http, max_retries=0
        )
        yield Node(engine, sdk, http, sent)


def events(res: httpx.Response) -> list[Any]:
    """The JSON `data:` payloads of an SSE body ([DONE] as the string)."""
    assert res.headers["content-type"].startswith("text/event-stream"), res.text
    out: list[Any] = []
    for line in res.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def error_of(res: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error
