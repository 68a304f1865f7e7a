"""One admitted request as the worker thread sees it, and its channel back to the event loop.

The worker never touches asyncio objects directly: text pieces go to the request's queue and
state changes to the engine's hooks through `call_soon_threadsafe`, in order. The engine's hook
for the end of a job updates the counters *before* it hands the result to the consumer, so a
client that reads `/status` right after its answer sees the engine idle.

A job the scheduler took in posts those calls to its `Outbox` instead, which hands them to the
loop in one `call_soon_threadsafe` when the worker is about to block (`llama_decode`, an empty
inbox). Why: a loop woken by each piece runs Python while the worker still samples, and then
every ctypes call of the worker (a dozen per sequence and step) gives the GIL to the loop and
waits up to the switch interval (5 ms) to get it back; woken once, right before a call that
holds no GIL for the whole step, the loop does its work while the worker is in C.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llamanet.node.engine._types import GenerationResult, Piece, SamplingParams

__all__ = ["Done", "Failed", "Job", "JobHooks", "Outbox"]

log = logging.getLogger("llamanet.node.engine")

_Call = tuple[Callable[..., Any], tuple[Any, ...]]


class Outbox:
    """The worker's calls for event loops, held until `flush()` (worker thread only)."""

    def __init__(self) -> None:
        self._calls: list[tuple[asyncio.AbstractEventLoop, _Call]] = []

    def post(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((loop, (fn, args)))

    def flush(self) -> None:
        """Hands the calls held to their loops, in order, one wake-up per loop."""
        if not self._calls:
            return
        calls, self._calls = self._calls, []
        by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        for loop, call in calls:
            by_loop.setdefault(loop, []).append(call)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_run_all, batch)
            except RuntimeError:  # the loop is already closed at shutdown
                pass


def _run_all(calls: list[_Call]) -> None:
    for fn, args in calls:  # one failing hook must not swallow the pieces behind it
        try:
            fn(*args)
        except Exception:
            log.exception("engine callback %r failed", fn)


@dataclass
class Done:
    result: GenerationResult


@dataclass
class Failed:
    error: Exception


class JobHooks(Protocol):
    """What the engine does, on the event loop, when a job's state changes."""

    def job_started(self, job: Job, reused: int, evaluated: int) -> None: ...

    def job_completed(self, job: Job, result: GenerationResult) -> None: ...

    def job_cancelled(self, job: Job, tokens: int) -> None: ...

    def job_failed(self, job: Job, error: Exception) -> None: ...


@dataclass(eq=False)
class Job:
    """`prompt_tokens` is every token that must be in the KV cache before the first sample: the
    prompt, then the `resume` tokens another node already generated. `max_tokens` is the whole
    completion budget, resumed tokens included."""

    prompt_tokens: list[int]
    max_tokens: int
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    hooks: JobHooks | None = None  # None: an engine that keeps its own books (tests' fakes)
    resume: list[int] = field(default_factory=list)
    fork: int = 0  # index among the n choices of one request (seed + fork)
    events: asyncio.Queue[Piece | Done | Failed] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    admitted_at: float = field(default_factory=time.perf_counter)
    started: bool = False
    finished: bool = False
    outbox: Outbox | None = None  # set by the scheduler that took the job in

    # ---- called from the worker thread

    def emit(self, piece: Piece) -> None:
        self._call(self.events.put_nowait, piece)

    def report_started(self, reused: int, evaluated: int) -> None:
        self._hook("job_started", reused, evaluated)

    def report_completed(self, result: GenerationResult) -> None:
        self._hook("job_completed", result)

    def report_cancelled(self, tokens: int) -> None:
        self._hook("job_cancelled", tokens)

    def fail(self, error: Exception) -> None:
        self._hook("job_failed", error)

    def _hook(self, name: str, *args: Any) -> None:
        if self.hooks is not None:
            self._call(getattr(self.hooks, name), self, *args)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.outbox is not None:
            self.outbox.post(self.loop, fn, *args)
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is already closed at shutdown
            pass
