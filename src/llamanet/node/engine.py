"""The inference engine: one `llama_cpp.Llama`, one worker thread, a bounded FIFO queue.

Requests are admitted synchronously (so a full queue becomes an HTTP 503 before any response
starts), then wait their turn in FIFO order; the worker thread runs one generation at a time and
hands each piece of text to the request's asyncio queue. The event loop never blocks on the model.
When the consumer goes away, the job's cancel flag is set and the worker stops at the next token.

Generation runs on `Llama.generate` (the token loop) rather than `create_completion`: it lets
the engine count tokens exactly, stop within one token step, and detokenize each token once
instead of re-detokenizing the whole answer per token.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_EMA = 0.3


def _ema(previous: float, sample: float) -> float:
    """Exponential moving average; the first sample is taken as is."""
    return sample if not previous else (1 - _EMA) * previous + _EMA * sample


class EngineError(Exception):
    """Base of the errors a request can meet in the engine."""


class QueueFull(EngineError):
    def __init__(self, retry_after: int) -> None:
        super().__init__("the node's request queue is full; retry later")
        self.retry_after = retry_after


class ContextLengthExceeded(EngineError):
    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens, but {prompt_tokens} prompt "
            f"tokens plus max_tokens={max_tokens} were requested ({prompt_tokens + max_tokens})."
        )
        self.prompt_tokens, self.max_tokens, self.n_ctx = prompt_tokens, max_tokens, n_ctx


class GenerationFailed(EngineError):
    """The model raised while generating."""


class EngineClosed(EngineError):
    def __init__(self) -> None:
        super().__init__("the engine is shutting down")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF, root rule "root": structured output and forced tool calls
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob + the top k


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives (OpenAI shape)."""

    token: str
    token_id: int
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Piece:
    """A stretch of generated output: the text now safe to send and the tokens generated since
    the previous piece. `token_ids` may cover text still held back (a possible stop sequence or
    an incomplete UTF-8 character); replaying the same ids reproduces the same held-back state,
    which is what lets another node resume a stream exactly."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_second: float
    queue_ms: float
    duration_s: float
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class _Done:
    result: GenerationResult


@dataclass
class _Failed:
    error: Exception


@dataclass(eq=False)
class Job:
    """One admitted request: its prompt tokens, its budget, and the channel back to its caller."""

    prompt_tokens: list[int]
    max_tokens: int
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Piece | _Done | _Failed] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    admitted_at: float = field(default_factory=time.perf_counter)
    started: bool = False
    finished: bool = False

    def emit(self, item: Piece | _Done | _Failed) -> None:
        """Called from the worker thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


@dataclass
class EngineStats:
    active: int = 0
    queued: int = 0
    requests_total: int = 0
    requests_completed: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    requests_rejected: int = 0
    tokens_generated: int = 0
    tokens_per_second: float = 0.0
    ttft_ms: float = 0.0
    request_seconds: float = 0.0


class _StopMatcher:
    """Holds back text that might be the start of a stop sequence; finds the first full match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((self._overlap(s) for s in self.stops), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _overlap(self, stop: str) -> int:
        for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:k]):
                return k
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _Shaping:
    """Interim, for this one-sequence engine until the batching engine's per-sequence sampler
    replaces it: `SamplingParams.grammar`, `.logit_bias` and `.logprobs` through
    `Llama.generate`'s grammar and logits processors (logprobs are read after the bias, before the
    grammar and the sampler's own steps)."""

    def __init__(self, llm: Any, params: SamplingParams) -> None:
        self.llm = llm
        self.params = params
        self._logits: Any = None

    def grammar(self) -> Any:
        if self.params.grammar is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(self.params.grammar, verbose=False)

    def processors(self) -> Any:
        import numpy as np
        from llama_cpp import LogitsProcessorList

        processors: list[Any] = []
        if self.params.logit_bias:
            ids = np.array([t for t, _ in self.params.logit_bias], dtype=np.intp)
            biases = np.array([b for _, b in self.params.logit_bias], dtype=np.single)

            def bias(_: Any, scores: Any) -> Any:
                scores[ids] += biases
                return scores

            processors.append(bias)
        if self.params.logprobs is not None:

            def observe(_: Any, scores: Any) -> Any:
                self._logits = np.array(scores, dtype=np.float64)
                return scores

            processors.append(observe)
        return LogitsProcessorList(processors) if processors else None

    def _text(self, token: int) -> tuple[str, tuple[int, ...]]:
        raw = self.llm.detokenize([token])
        return raw.decode("utf-8", errors="replace"), tuple(raw)

    def logprob(self, token: int) -> TokenLogprob:
        import numpy as np

        logits = self._logits
        top = self.params.logprobs or 0
        high = float(logits.max())
        logsumexp = high + math.log(float(np.exp(logits - high).sum()))
        best = np.argpartition(-logits, top)[:top] if top else np.array([], dtype=np.intp)
        best = best[np.argsort(-logits[best])]
        text, raw = self._text(token)
        alternatives = []
        for candidate in best:
            alt_text, alt_raw = self._text(int(candidate))
            alternatives.append(TopLogprob(alt_text, float(logits[candidate]) - logsumexp, alt_raw))
        return TokenLogprob(text, token, float(logits[token]) - logsumexp, raw, tuple(alternatives))


class LlamaEngine:
    """Owns one model; `submit` admits a request, `stream`/`run` execute it in FIFO order."""

    def __init__(self, llm: Any, *, model_path: Path, model_id: str, queue_size: int) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llm
        self.model_path = model_path
        self.model_id = model_id
        self.queue_size = queue_size
        self.n_ctx: int = llm.n_ctx()
        self.n_vocab: int = llm.n_vocab()
        self.metadata: dict[str, str] = dict(llm.metadata)
        self.stats = EngineStats()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        self._chat_template = self._make_chat_formatter()
        self._worker = threading.Thread(target=self._work, name="llamanet-engine", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ construction

    @classmethod
    async def load(
        cls,
        model_path: Path,
        *,
        model_id: str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        queue_size: int = 8,
    ) -> LlamaEngine:
        """Loads the model on a thread (it takes a moment) and starts the worker."""

        def _load() -> Any:
            from llama_cpp import Llama

            return Llama(  # n_threads_batch too: its default (every core) spins an extra team
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_batch=n_batch,
                verbose=False,
            )

        llm = await asyncio.to_thread(_load)
        return cls(llm, model_path=model_path, model_id=model_id, queue_size=queue_size)

    def _make_chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.metadata.get("tokenizer.chat_template") or _FALLBACK_CHAT_TEMPLATE
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._piece(self.llm.token_eos()),
            bos_token=self._piece(self.llm.token_bos()),
            add_generation_prompt=True,
        )

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    # ------------------------------------------------------------------ public state

    @property
    def capacity(self) -> int:
        """Requests the node holds at once: one running plus the queue."""
        return 1 + self.queue_size

    @property
    def utilization(self) -> float:
        return (self.stats.active + self.stats.queued) / self.capacity

    @property
    def quantization(self) -> str | None:
        name = self.model_path.name.removesuffix(".gguf")
        tail = name.rsplit(".", 1)[-1] if "." in name else ""
        return tail if tail.upper().startswith(("Q", "F", "IQ", "BF")) else None

    def retry_after(self) -> int:
        per_request = self.stats.request_seconds or 2.0
        return max(1, math.ceil(per_request * max(1, self.stats.queued)))

    # ------------------------------------------------------------------ preparing requests

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return self._chat_template(messages=messages).prompt

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

    def _tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self._tokenize_prompt(self.render_chat(messages))

    async def tokenize(
        self, *, prompt: str | None = None, messages: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Prompt tokens of a completion prompt or of chat messages (template from the GGUF)."""
        if messages is not None:
            return await asyncio.to_thread(self._tokenize_chat, messages)
        return await asyncio.to_thread(self._tokenize_prompt, prompt or "")

    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> Job:
        """Admits a request or raises at once (`QueueFull`, `ContextLengthExceeded`)."""
        if self._closed:
            raise EngineClosed()
        room = self.n_ctx - len(prompt_tokens)
        max_tokens = params.max_tokens if params.max_tokens is not None else max(room, 0)
        if len(prompt_tokens) + max_tokens > self.n_ctx or room <= 0:
            raise ContextLengthExceeded(len(prompt_tokens), max_tokens, self.n_ctx)
        if self.stats.active + self.stats.queued >= self.capacity:
            self.stats.requests_rejected += 1
            raise QueueFull(self.retry_after())
        job = Job(list(prompt_tokens), max_tokens, params, asyncio.get_running_loop())
        self.stats.queued += 1
        self.stats.requests_total += 1
        self._jobs.put(job)
        return job

    # ------------------------------------------------------------------ consuming results

    async def stream(self, job: Job) -> AsyncIterator[Piece | GenerationResult]:
        """Yields text pieces as they are generated, then the `GenerationResult`.

        Closing the iterator early (client gone, timeout, task cancelled) cancels the job: a
        queued job never starts, a running one stops at the next token.
        """
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, Piece):
                    yield item
                elif isinstance(item, _Done):
                    yield item.result
                    return
                else:
                    raise item.error
        finally:
            self._abandon(job)

    async def run(self, job: Job) -> GenerationResult:
        """Runs a job to the end and returns its result (cancelled if the caller is)."""
        async for item in self.stream(job):
            if isinstance(item, GenerationResult):
                return item
        raise GenerationFailed("generation ended without a result")  # pragma: no cover

    async def close(self) -> None:
        """Stops accepting work, cancels what is queued or running, and joins the worker."""
        self._closed = True
        self._jobs.put(None)
        await asyncio.to_thread(self._worker.join, 10.0)

    # ------------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancel.is_set():
                continue  # its caller left while it was queued; already accounted for
            self._on_loop(job, self._start)
            try:
                self._generate(job)
            except Exception as exc:  # the model failed; the node keeps serving
                log.exception("generation failed")
                job.emit(_Failed(GenerationFailed(f"generation failed: {exc}")))
                self._on_loop(job, self._finish, "failed", 0, 0.0, 0.0)
        while True:  # shutting down: fail whatever is still queued
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(_Failed(EngineClosed()))

    @staticmethod
    def _on_loop(job: Job, fn: Any, *args: Any) -> None:
        """Stats live on the event loop's thread; the worker updates them through it."""
        try:
            job.loop.call_soon_threadsafe(fn, job, *args)
        except RuntimeError:  # the loop is already closed at shutdown
            pass

    def _start(self, job: Job) -> None:
        if job.finished:  # abandoned between the worker's check and now
            return
        job.started = True
        self.stats.queued -= 1
        self.stats.active += 1

    def _abandon(self, job: Job) -> None:
        """The caller left; a job that never started is dropped from the queue count at once."""
        job.cancel.set()
        if not job.started and not job.finished:
            job.finished = True
            self.stats.queued -= 1
            self.stats.requests_cancelled += 1

    def _finish(
        self, job: Job, outcome: str, tokens: int, ttft_ms: float, tps: float, seconds: float = 0.0
    ) -> None:
        if job.finished:
            return
        job.finished = True
        s = self.stats
        s.active -= 1
        s.tokens_generated += tokens
        if outcome == "cancelled":
            s.requests_cancelled += 1
        elif outcome == "failed":
            s.requests_failed += 1
        else:
            s.requests_completed += 1
            s.ttft_ms = _ema(s.ttft_ms, ttft_ms)
            if tps > 0:
                s.tokens_per_second = _ema(s.tokens_per_second, tps)
            s.request_seconds = _ema(s.request_seconds, seconds)  # generation only, not queueing

    def _generate(self, job: Job) -> None:
        llm, params = self.llm, job.params
        is_eog = self._llama_cpp.llama_vocab_is_eog
        vocab = llm._model.vocab  # the same check create_completion uses
        llm.set_seed(params.seed if params.seed is not None else self._llama_cpp.LLAMA_DEFAULT_SEED)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopMatcher(params.stop)
        pieces: list[str] = []
        generated: list[int] = []
        sent = 0  # generated[:sent] went out in pieces
        started = time.perf_counter()
        first = last = started
        n = 0
        finish = "length"
        shaping = _Shaping(llm, params)
        logprobs: list[TokenLogprob] = []
        tokens = llm.generate(
            job.prompt_tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            reset=True,
            logits_processor=shaping.processors(),
            grammar=shaping.grammar(),
        )
        try:
            for token in tokens:
                if job.cancel.is_set():
                    finish = "cancelled"
                    break
                if is_eog(vocab, token):
                    finish = "stop"
                    break
                n += 1
                last = time.perf_counter()
                if n == 1:
                    first = last
                generated.append(token)
                if params.logprobs is not None:
                    logprobs.append(shaping.logprob(token))
                text, hit = stops.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    pieces.append(text)
                    job.emit(Piece(text, tuple(generated[sent:]), tuple(logprobs[sent:])))
                    sent = len(generated)
                if hit:
                    finish = "stop"
                    break
                if n >= job.max_tokens:
                    break
        finally:
            tokens.close()
        if finish == "cancelled":
            self._on_loop(job, self._finish, "cancelled", n, 0.0, 0.0)
            return
        tail = stops.flush() + decoder.decode(b"", final=True)  # empty after a stop-sequence hit
        if tail or sent < len(generated):
            pieces.append(tail)
            job.emit(Piece(tail, tuple(generated[sent:]), tuple(logprobs[sent:])))
        ttft_ms = (first - started) * 1000
        tps = (n - 1) / (last - first) if n > 1 and last > first else 0.0
        result = GenerationResult(
            text="".join(pieces),
            finish_reason=finish,
            prompt_tokens=len(job.prompt_tokens),
            completion_tokens=n,
            ttft_ms=ttft_ms,
            tokens_per_second=tps,
            queue_ms=(started - job.admitted_at) * 1000,
            duration_s=time.perf_counter() - started,
            token_ids=generated,
            logprobs=logprobs,
        )
        job.emit(_Done(result))
        self._on_loop(job, self._finish, "completed", n, ttft_ms, tps, result.duration_s)
