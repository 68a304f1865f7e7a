"""Test doubles for the fast tier: a scripted `FakeEngine` and an in-process node around it.

`FakeEngine` is a stand-in for the real engine in unit tests only (never a default anywhere): it
implements the engine API (`llamanet.node.engine_api.Engine`), answers every request with the
same scripted pieces, one token each, and keeps the same counters as the real engine. Delays,
failures, a held slot and a full queue are configurable, so the HTTP app's behaviour around them
can be tested without a model or a process.

`serving(...)` runs `create_app(LlamaNetNode(settings, engine=..., dht=False))` through its
lifespan and yields an `httpx.AsyncClient` on `httpx.ASGITransport`: real FastAPI, real
middleware, no sockets.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llamanet.node.app import create_app
from llamanet.node.config import NodeSettings
from llamanet.node.engine import (
    ContextLengthExceeded,
    EngineClosed,
    EngineStats,
    GenerationFailed,
    GenerationResult,
    Job,
    Piece,
    QueueFull,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)
from llamanet.node.node import LlamaNetNode

__all__ = ["FakeEngine", "serving"]

BOS = 1


@dataclass
class FakeEngine:
    """A scripted engine for in-process tests (see the module docstring).

    Every request generates `pieces` in order (one token each, id 101, 102, ..., cut at
    `max_tokens`; stop sequences, grammars and logit biases are not applied: `submitted` records
    the parameters so tests can assert what reached the engine), then a `GenerationResult` with
    `finish_reason` (`"length"` when cut). A token is the text it releases (`""`: its text is
    held back) or its bytes; either way it goes through an incremental UTF-8 decoder, so a
    character split across tokens comes out with the token that completes it. As the real engine
    (`_scheduler.py`), a token that releases nothing yields no piece (its id rides on the next
    one), and the end of the generation releases `tail` (text a stop matcher held back that was
    no stop sequence after all) and U+FFFD for a character the decoder still held, in a last
    piece with the ids not sent yet (none, often). `submit_n` forks n jobs; fork i answers
    `variants[i]` when variants are given. With `params.logprobs = k` each token's piece carries
    a scripted `TokenLogprob` (logprob -0.25 per position, k alternatives `alt0..`), and the
    result all of them. `tokenized` records what was tokenized (the rendered chat or the
    prompt). A resumed job (`resume_tokens`) first replays its resumed tokens (the script's
    first ones, whatever the ids say) as the real engine's `_start` does: one `replayed` piece
    per token that released text, with that text and the ids since the previous one, then one
    without text for the ids left (their text still held back); the rest is generated as above.
    `delay` seconds pass before each piece; `fail_after=k` raises `GenerationFailed` after k
    pieces; while `hold` is set-able and unset, a started request waits on it (a busy slot);
    `queue_full=True` refuses every request with `QueueFull(retry_after)`. Prompts tokenize to
    one token per whitespace-separated word plus a BOS token.
    """

    pieces: Sequence[str | bytes] = ("Hello", ",", " world", "!")
    variants: Sequence[Sequence[str | bytes]] = ()
    tail: str = ""
    model_id: str = "fake-model"
    n_ctx: int = 1024
    n_vocab: int = 1000
    queue_size: int = 2
    parallel: int = 1
    n_gpu_layers: int = 0
    finish_reason: str = "stop"
    delay: float = 0.0
    fail_after: int | None = None
    hold: asyncio.Event | None = None
    queue_full: bool = False
    retry_after_s: int = 7
    model_path: Path = Path("/models/fake-model.Q4_0.gguf")
    metadata: dict[str, str] = field(default_factory=lambda: {"general.name": "fake"})
    stats: EngineStats = field(default_factory=EngineStats)
    submitted: list[tuple[list[int], SamplingParams]] = field(default_factory=list)
    submitted_n: list[int] = field(default_factory=list)  # n of each submit_n call
    tokenized: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set once a request starts
    closed: bool = False
    _scripts: dict[int, Sequence[str | bytes]] = field(default_factory=dict)

    # ------------------------------------------------------------------ public state

    @property
    def capacity(self) -> int:
        return self.parallel + self.queue_size

    @property
    def utilization(self) -> float:
        return (self.stats.active + self.stats.queued) / self.capacity

    @property
    def quantization(self) -> str | None:
        return "Q4_0"

    def retry_after(self) -> int:
        return self.retry_after_s

    # ------------------------------------------------------------------ preparing requests

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        turns = "".join(f"<{m['role']}> {m['content']}\n" for m in messages)
        return turns + "<assistant>"

    async def tokenize(
        self, *, prompt: str | None = None, messages: list[dict[str, Any]] | None = None
    ) -> list[int]:
        text = self.render_chat(messages) if messages is not None else prompt or ""
        self.tokenized.append(text)
        return [BOS, *(len(word) + 2 for word in text.split())]

    def submit(
        self, prompt_tokens: list[int], params: SamplingParams, *, resume_tokens: Sequence[int] = ()
    ) -> Job:
        if self.closed:
            raise EngineClosed()
        room = self.n_ctx - len(prompt_tokens)
        max_tokens = params.max_tokens if params.max_tokens is not None else max(room, 0)
        if len(prompt_tokens) + max_tokens > self.n_ctx or room <= 0:
            raise ContextLengthExceeded(len(prompt_tokens), max_tokens, self.n_ctx)
        if self.queue_full or self.stats.active + self.stats.queued >= self.capacity:
            self.stats.requests_rejected += 1
            raise QueueFull(self.retry_after())
        self.submitted.append((list(prompt_tokens), params))
        resume = list(resume_tokens)  # the pieces of these ids are replayed, not generated
        loop = asyncio.get_running_loop()
        job = Job(list(prompt_tokens), max_tokens, params, loop, resume=resume)
        self.stats.queued += 1
        self.stats.requests_total += 1
        return job

    def submit_n(self, prompt_tokens: list[int], params: SamplingParams, n: int) -> list[Job]:
        if self.stats.active + self.stats.queued + n > self.capacity and not self.queue_full:
            self.stats.requests_rejected += 1
            raise QueueFull(self.retry_after())
        jobs = []
        for index in range(n):
            job = self.submit(prompt_tokens, params)
            if self.variants:
                self._scripts[id(job)] = self.variants[index % len(self.variants)]
            jobs.append(job)
        self.submitted_n.append(n)
        return jobs

    def _logprob(self, text: str, position: int, k: int) -> TokenLogprob:
        alternatives = tuple(
            TopLogprob(f"alt{j}", -1.0 - j, tuple(f"alt{j}".encode())) for j in range(k)
        )
        return TokenLogprob(
            text, 100 + position, -0.25 * position, tuple(text.encode()), alternatives
        )

    # ------------------------------------------------------------------ consuming results

    async def stream(self, job: Job) -> AsyncIterator[Piece | GenerationResult]:
        outcome = "cancelled"
        n = 0
        try:
            job.started = True
            self.stats.queued -= 1
            self.stats.active += 1
            self.started.set()
            if self.hold is not None:
                await self.hold.wait()
            started = time.perf_counter()
            pieces = self._scripts.pop(id(job), self.pieces)
            script = [p.encode() if isinstance(p, str) else p for p in pieces][: job.max_tokens]
            k = job.params.logprobs
            logprobs: list[TokenLogprob] = []
            texts: list[str] = []  # released here (not the replayed ones)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            n = len(job.resume)  # a resumed job replays the tokens already generated
            sent = 0  # ids 101..100+sent went out in pieces
            for i, token in enumerate(script[:n], start=1):
                text = decoder.decode(token)
                if text:  # the text the first node released for this token
                    yield Piece(text, _ids(sent, i), replayed=True)
                    sent = i
            if sent < n:
                yield Piece("", _ids(sent, n), replayed=True)
                sent = n
            for token in script[n:]:
                if self.fail_after is not None and n >= self.fail_after:
                    outcome = "failed"
                    raise GenerationFailed("generation failed: the fake engine was told to fail")
                if self.delay:
                    await asyncio.sleep(self.delay)
                n += 1
                text = decoder.decode(token)
                piece_logprobs = () if k is None else (self._logprob(text, n, k),)
                logprobs.extend(piece_logprobs)
                if text or piece_logprobs:
                    texts.append(text)
                    yield Piece(text, _ids(sent, n), piece_logprobs)
                    sent = n
            tail = self.tail + decoder.decode(b"", final=True)
            if tail or sent < n:  # the engine's `_complete`
                texts.append(tail)
                yield Piece(tail, _ids(sent, n))
            cut = len(pieces) > job.max_tokens
            outcome = "completed"
            yield GenerationResult(
                text="".join(texts),  # as the engine: not the resumed
                finish_reason="length" if cut else self.finish_reason,
                prompt_tokens=len(job.prompt_tokens),
                completion_tokens=n,
                ttft_ms=1.5,
                tokens_per_second=42.0,
                queue_ms=0.0,
                duration_s=time.perf_counter() - started,
                token_ids=list(_ids(0, n)),
                logprobs=logprobs,
            )
        finally:
            self._finish(job, outcome, n)

    def _finish(self, job: Job, outcome: str, tokens: int) -> None:
        if job.finished:
            return
        job.finished = True
        self.stats.active -= 1
        self.stats.tokens_generated += tokens
        if outcome == "completed":
            self.stats.requests_completed += 1
        elif outcome == "failed":
            self.stats.requests_failed += 1
        else:
            self.stats.requests_cancelled += 1

    async def run(self, job: Job) -> GenerationResult:
        async for item in self.stream(job):
            if isinstance(item, GenerationResult):
                return item
        raise GenerationFailed("generation ended without a result")

    def begin_close(self) -> None:
        self.closed = True

    async def close(self) -> None:
        self.closed = True


def _ids(after: int, upto: int) -> tuple[int, ...]:
    """The ids of the script's tokens after the first `after`, up to the `upto`th."""
    return tuple(range(101 + after, 101 + upto))


@asynccontextmanager
async def serving(
    settings: NodeSettings, engine: FakeEngine | None = None, **client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process node (no DHT, no gateway) serving `engine`, and a client for it."""
    node = LlamaNetNode(settings, engine=engine, dht=False)
    app = create_app(node)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://node.test", **client
        ) as http:
            yield http
