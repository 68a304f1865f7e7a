"""`read_ahead`: items in order, a marker per silence, the stop event, errors, and closing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from llamanet.node.read_ahead import SILENT, STOPPED, read_ahead


async def _paced(delays: list[float], closed: list[bool] | None = None) -> AsyncGenerator[int]:
    try:
        for i, delay in enumerate(delays):
            await asyncio.sleep(delay)
            yield i
    finally:
        if closed is not None:
            closed.append(True)


async def _all(gen: AsyncGenerator[Any]) -> list[Any]:
    async with contextlib.aclosing(gen):
        return [item async for item in gen]


async def test_items_come_in_order_without_markers_when_never_silent() -> None:
    assert await _all(read_ahead(_paced([0.0] * 50), silence=5.0)) == list(range(50))


async def test_a_marker_per_silence_and_the_stream_goes_on() -> None:
    got = await _all(read_ahead(_paced([0.0, 0.35, 0.0]), silence=0.1))
    assert got[0] == 0 and got[-2:] == [1, 2]
    silences = got[1:-2]
    assert silences and all(m is SILENT for m in silences)
    assert 2 <= len(silences) <= 4  # about one per 0.1 s of the 0.35 s wait


async def test_stop_comes_after_the_items_already_read() -> None:
    stop = asyncio.Event()
    closed: list[bool] = []
    got = []
    async with contextlib.aclosing(
        read_ahead(_paced([0.0, 0.0, 10.0], closed), silence=None, stop=stop)
    ) as items:
        async for item in items:
            got.append(item)
            if item == 1:
                stop.set()
            if item is STOPPED:
                break
    assert got == [0, 1, STOPPED]
    assert closed == [True]  # the source is closed by the time read_ahead is


async def test_an_error_of_the_source_is_raised_to_the_consumer() -> None:
    async def failing() -> AsyncGenerator[int]:
        yield 1
        raise ValueError("upstream broke")

    with pytest.raises(ValueError, match="upstream broke"):
        await _all(read_ahead(failing(), silence=1.0))


async def test_closing_early_stops_the_reader_and_closes_the_source() -> None:
    closed: list[bool] = []
    gen = read_ahead(_paced([0.0, 10.0], closed), silence=0.05)
    assert await anext(gen) == 0
    await gen.aclose()
    assert closed == [True]
    await asyncio.sleep(0.12)  # no timer left behind to fire into a dead queue
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
