"""Reading an async stream ahead of its consumer, with a watch on its silences.

A stream's consumer that also wants to hear of silence (an SSE keep-alive after `every`
seconds without an event; a relay giving up on a peer that sent nothing for `stall_timeout`)
could wrap each wait in a timeout, but a timeout that fires cancels the read, and that ends
an async generator. So one task reads the stream into a queue for its whole life, and one
timer per silence interval checks when an item last came: an item costs a queue hand-over,
not a task, an `asyncio.wait` or a timer of its own (per token, on a CPU the model needs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any, Final, TypeVar

__all__ = ["SILENT", "STOPPED", "read_ahead"]

T = TypeVar("T")


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SILENT: Final = _Marker("SILENT")  # `silence` seconds passed without an item
STOPPED: Final = _Marker("STOPPED")  # the `stop` event was set
_END: Final = _Marker("END")


async def read_ahead(
    items: AsyncIterable[T],
    silence: float | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncGenerator[T | _Marker, None]:
    """The items of `items` as they come, `SILENT` after each `silence` seconds without one
    (None: never), and `STOPPED` once `stop` is set (the items read before it come first).
    What reading `items` raises is raised here. Closing this generator stops the reading."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    last = loop.time()
    timer: asyncio.TimerHandle | None = None

    async def pump() -> None:
        nonlocal last
        try:
            async for item in items:
                last = loop.time()
                queue.put_nowait(item)
        except Exception as exc:  # handed to the consumer, raised there
            queue.put_nowait(exc)
        else:
            queue.put_nowait(_END)

    def watch() -> None:
        nonlocal timer, last
        assert silence is not None
        if reader.done():
            return
        quiet = loop.time() - last
        if quiet >= silence:
            last = loop.time()  # the next silence counts from here
            queue.put_nowait(SILENT)
            quiet = 0.0
        timer = loop.call_later(silence - quiet, watch)

    def stopped(waited: asyncio.Future[Any]) -> None:
        if not waited.cancelled():
            queue.put_nowait(STOPPED)

    reader = asyncio.create_task(pump())
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopping is not None:
        stopping.add_done_callback(stopped)
    if silence is not None:
        timer = loop.call_later(silence, watch)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        if timer is not None:
            timer.cancel()
        if stopping is not None:
            stopping.cancel()
        if not reader.done():
            reader.cancel()
            # waited for, so that `items` is closed when this is (its owner may close it next);
            # its error (e.g. the upstream closed under it) is nobody's to handle
            await asyncio.wait({reader})
        if not reader.cancelled():
            reader.exception()
