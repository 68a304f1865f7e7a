"""Running work for a request only while its client is still there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from llamanet.node.errors import APIError

T = TypeVar("T")


async def unless_disconnected(
    request: Request, work: Awaitable[T], timeout: float | None = None
) -> T:
    """Runs `work` unless the client disconnects first (499) or `timeout` passes (504); either
    way `work` is cancelled. Non-streaming handlers need this: nothing else notices the client
    leaving before the response starts."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait(
            {task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if watcher in done:
        raise APIError(499, "The client closed the request.", code="client_closed")
    raise APIError(504, "The request took too long.", code="timeout")
