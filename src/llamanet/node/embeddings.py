"""Embeddings: mean-pooled, L2-normalised vectors of the node's model, on a context of their own.

Why a context of its own: the generation engine's context keeps logits of the last token and
its KV cache for the answer it is writing; an embedding needs every token's final hidden state
and must not disturb that. `EmbeddingService` therefore opens the same GGUF a second time, on
the first embeddings request (a node that is never asked pays nothing). The weights are mmapped,
so the page cache holds them once; VmRSS counts the file pages of both mappings, the memory
really added is the context (KV cache for `n_ctx` plus one chunk, and the output buffers).

Why the pooling is done here and not by llama.cpp (`pooling_type=MEAN`): llama.cpp pools per
micro-batch, so a MEAN-pooled input must fit one micro-batch (`n_ubatch >= n_ctx`), and in
embedding mode it still writes the logits of every token: at `n_ubatch` 2048 and a 49k
vocabulary that is 400 MB of output buffer (measured: +520 MB anonymous memory after one long
input). With `pooling_type=NONE` an input is decoded in chunks of `batch_tokens` through the KV
cache (causal attention: the same hidden states), the per-token states are summed here, and
memory stays bounded by the chunk size whatever `n_ctx` is. Short inputs share a decode, each
its own sequence (streaming the weights once for many inputs). llama.cpp's CPU kernels depend on
the batch size, so one text's vector alone and beside others agrees to rounding (measured: cosine
0.9995), not bit for bit; the same request always gives the same vectors.

Requests run one at a time from one worker thread, behind a bounded queue (a full queue is
`QueueFull`: 503 with Retry-After); the event loop only awaits a future. Each request's model
work runs on a thread that ends with it (`call_in_passing_thread`): a thread that has run
llama.cpp keeps an idle OpenMP team while it lives, and one kept by this worker slowed the
generation engine's every step (one stream: 44 tokens/s before the first embeddings request,
37 after, for the rest of the node's life). A request
whose caller leaves is dropped from the queue, or stops at the next chunk.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from llamanet.node.engine import EngineClosed, QueueFull, call_in_passing_thread, load_model

__all__ = [
    "BATCH_TOKENS",
    "MAX_REQUEST_TOKENS",
    "EmbeddingFailed",
    "EmbeddingInputError",
    "EmbeddingService",
    "Embeddings",
    "Segment",
    "check_dimensions",
    "check_inputs",
    "encode_vector",
    "normalize",
    "plan_batches",
]

log = logging.getLogger(__name__)

BATCH_TOKENS = 128  # tokens per decode: bounds the output buffers (tokens x vocabulary floats)
MAX_SEQUENCES = 16  # inputs one decode may hold
MAX_REQUEST_TOKENS = 32768  # all inputs of one request together: a clear 400, not a 10-minute 504

Vectors = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- pure helpers


class EmbeddingInputError(ValueError):
    """An input the model cannot embed: answered as a 400 with this message, param and code."""

    def __init__(self, message: str, *, code: str, param: str = "input") -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class EmbeddingFailed(RuntimeError):
    """The model could not be loaded or failed while embedding."""


@dataclass(frozen=True)
class Embeddings:
    vectors: Vectors  # (inputs, dimensions), each row of L2 norm 1
    prompt_tokens: int


@dataclass(frozen=True)
class Segment:
    """A stretch of one input in one decode: tokens `start .. start + length` of input `index`."""

    index: int
    start: int
    length: int
    last: bool  # the input ends here


def plan_batches(
    lengths: Sequence[int], batch_tokens: int, max_sequences: int = MAX_SEQUENCES
) -> list[list[Segment]]:
    """Packs inputs of `lengths` tokens, in order, into decodes of at most `batch_tokens` tokens
    and `max_sequences` inputs. An input longer than the room left continues in the next decode
    at its next position (the KV cache holds its earlier tokens), so at most one input is open
    across decodes and the inputs of one decode are consecutive."""
    if batch_tokens < 1 or max_sequences < 1:
        raise ValueError("batch_tokens and max_sequences must be positive")
    batches: list[list[Segment]] = []
    current: list[Segment] = []
    room = batch_tokens
    for index, length in enumerate(lengths):
        start = 0
        while start < length:
            if room == 0 or len(current) == max_sequences:
                batches.append(current)
                current, room = [], batch_tokens
            take = min(room, length - start)
            current.append(Segment(index, start, take, start + take == length))
            start += take
            room -= take
    if current:
        batches.append(current)
    return batches


def check_inputs(
    token_lists: Sequence[Sequence[int]], *, n_ctx: int, n_vocab: int, max_total: int
) -> int:
    """Raises `EmbeddingInputError` for an input the model cannot embed; returns the tokens."""
    total = 0
    for index, tokens in enumerate(token_lists):
        where = f"'input[{index}]'" if len(token_lists) > 1 else "'input'"
        if not tokens:
            raise EmbeddingInputError(f"{where} holds no tokens.", code="empty_input")
        if len(tokens) > n_ctx:
            raise EmbeddingInputError(
                f"{where} is {len(tokens)} tokens long; this model embeds at most {n_ctx} "
                "tokens per input.",
                code="context_length_exceeded",
            )
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise EmbeddingInputError(
                f"{where} holds token id {bad}, outside this model's vocabulary "
                f"(0 to {n_vocab - 1}).",
                code="invalid_token",
            )
        total += len(tokens)
    if total > max_total:
        raise EmbeddingInputError(
            f"The inputs total {total} tokens; one request may hold at most {max_total}.",
            code="too_many_tokens",
        )
    return total


def check_dimensions(requested: int | None, dimensions: int) -> None:
    """`dimensions` is honoured only when it is the model's own size (no truncation here)."""
    if requested is not None and requested != dimensions:
        raise EmbeddingInputError(
            f"This model returns {dimensions} dimensions; 'dimensions' is not supported "
            f"(send {dimensions} or leave it out).",
            code="unsupported_dimensions",
            param="dimensions",
        )


def normalize(vectors: npt.NDArray[np.floating[Any]]) -> Vectors:
    """Each row scaled to L2 norm 1, as float32 (an all-zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def encode_vector(
    vector: Vectors, encoding_format: Literal["float", "base64"]
) -> list[float] | str:
    """OpenAI's two encodings: a list of floats (the float32 values exactly), or base64 of the
    little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    floats: list[float] = np.asarray(vector, dtype=np.float32).tolist()
    return floats


# --------------------------------------------------------------------------- the service


@dataclass(eq=False)
class _Job:
    inputs: list[str] | list[list[int]]
    dimensions: int | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Embeddings]
    cancel: threading.Event = field(default_factory=threading.Event)
    state: Literal["queued", "running", "abandoned", "done"] = "queued"

    def resolve(self, outcome: Embeddings | Exception) -> None:
        """Called from the worker thread: hands the outcome to the waiting coroutine."""

        def deliver() -> None:
            if self.future.done():
                return
            if isinstance(outcome, Exception):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed at shutdown: nobody waits any more
            pass


class _Cancelled(Exception):
    """The caller left while its request was running."""


class EmbeddingService:
    """Embeds inputs with the model at `model_path` (see the module docstring).

    `n_ctx` is the longest input in tokens; `queue_size` requests may wait behind the running
    one. The model is loaded by the worker thread on the first request.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        queue_size: int = 8,
        batch_tokens: int = BATCH_TOKENS,
        max_request_tokens: int = MAX_REQUEST_TOKENS,
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.queue_size = queue_size
        self.batch_tokens = batch_tokens
        self.max_request_tokens = max_request_tokens
        self.dimensions: int | None = None  # known once the model is loaded
        self.decodes = 0  # llama_decode calls so far (each at most `batch_tokens` tokens)
        self._lock = threading.Lock()  # guards job states and `_pending`, held for microseconds
        self._pending = 0  # admitted and not finished nor abandoned
        self._seconds = 0.0  # moving average of a request's run time (Retry-After)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._running: _Job | None = None
        self._worker: threading.Thread | None = None  # started by the first request
        self._load_error: str | None = None
        # the llama objects: used by one thread at a time (a job's, then the worker's to free)
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._n_vocab = 0

    # ------------------------------------------------------------------ public state

    @property
    def capacity(self) -> int:
        return 1 + self.queue_size

    @property
    def loaded(self) -> bool:
        return self.dimensions is not None

    @property
    def pending(self) -> int:
        return self._pending

    def retry_after(self) -> int:
        return max(1, math.ceil((self._seconds or 1.0) * max(1, self._pending)))

    # ------------------------------------------------------------------ requests

    async def embed(
        self, inputs: list[str] | list[list[int]], *, dimensions: int | None = None
    ) -> Embeddings:
        """The inputs' vectors; raises `QueueFull`, `EngineClosed`, `EmbeddingInputError`,
        `EmbeddingFailed`. Cancelling the caller drops or stops the request."""
        if self._closed:
            raise EngineClosed()
        loop = asyncio.get_running_loop()
        job = _Job(list(inputs), dimensions, loop, loop.create_future())  # type: ignore[arg-type]
        with self._lock:
            if self._pending >= self.capacity:
                raise QueueFull(self.retry_after())
            self._pending += 1
        self._start_worker()
        self._jobs.put(job)
        try:
            return await job.future
        finally:
            with self._lock:
                if job.state == "queued":  # never started: its queue slot is free at once
                    job.state = "abandoned"
                    self._pending -= 1
            job.cancel.set()  # a running job stops at its next chunk

    async def close(self) -> None:
        """Refuses new requests, fails queued ones, stops the running one, frees the model."""
        self._closed = True
        running = self._running
        if running is not None:
            running.cancel.set()
        if self._worker is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._worker.join, 30.0)

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._work, name="llamanet-embeddings", daemon=True
            )
            self._worker.start()

    # ------------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                with self._lock:
                    if job.state == "abandoned":
                        continue
                    job.state = "running"
                self._running = job
                started = time.perf_counter()
                outcome = call_in_passing_thread(functools.partial(self._outcome, job))
                self._running = None
                seconds = time.perf_counter() - started
                self._seconds = (
                    seconds if not self._seconds else 0.7 * self._seconds + 0.3 * seconds
                )
                with self._lock:  # the slot is free before the caller hears of the outcome
                    job.state = "done"
                    self._pending -= 1
                job.resolve(outcome)
            while True:  # shutting down: fail whatever is still queued
                try:
                    left = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if left is not None:
                    left.resolve(EngineClosed())
        finally:
            self._free()

    def _outcome(self, job: _Job) -> Embeddings | Exception:
        if self._closed:  # queued before `close()`: not started any more
            return EngineClosed()
        try:
            return self._run(job)
        except (EmbeddingInputError, EmbeddingFailed) as exc:
            return exc
        except _Cancelled:  # its caller is gone, or the node is closing
            return EngineClosed()
        except Exception as exc:  # the model failed; the node keeps serving
            log.exception("embedding failed")
            return EmbeddingFailed(f"embedding failed: {exc}")

    def _run(self, job: _Job) -> Embeddings:
        self._load()
        assert self.dimensions is not None
        check_dimensions(job.dimensions, self.dimensions)
        token_lists = [self._tokenize(x) if isinstance(x, str) else x for x in job.inputs]
        total = check_inputs(
            token_lists,
            n_ctx=self.n_ctx,
            n_vocab=self._n_vocab,
            max_total=self.max_request_tokens,
        )
        return Embeddings(self._encode(token_lists, job.cancel), total)

    def _load(self) -> None:
        if self._model is not None:
            return
        if self._load_error is not None:
            raise EmbeddingFailed(self._load_error)
        import llama_cpp
        from llama_cpp import _internals

        try:
            self._model = load_model(self.model_path)
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self.n_ctx + self.batch_tokens  # the open input plus one chunk
            params.n_batch = params.n_ubatch = self.batch_tokens
            params.n_seq_max = MAX_SEQUENCES
            params.kv_unified = True  # sequences of any length share the cache
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE  # pooled here, see above
            if self.n_threads:
                params.n_threads = params.n_threads_batch = self.n_threads
            params.no_perf = True
            self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
            self._batch = _internals.LlamaBatch(
                n_tokens=self.batch_tokens, embd=0, n_seq_max=1, verbose=False
            )
        except Exception as exc:
            self._free()
            self._load_error = f"could not load the embedding model: {exc}"
            log.error("%s", self._load_error)
            raise EmbeddingFailed(self._load_error) from exc
        self._n_vocab = self._model.n_vocab()
        self.dimensions = self._model.n_embd()
        log.info("embedding context ready (%d dimensions)", self.dimensions)

    def _tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._model.tokenize(text.encode("utf-8"), True, False)
        return tokens

    def _encode(self, token_lists: Sequence[Sequence[int]], cancel: threading.Event) -> Vectors:
        import llama_cpp

        assert self.dimensions is not None
        width = self.dimensions
        lengths = [len(tokens) for tokens in token_lists]
        sums = np.zeros((len(token_lists), width), dtype=np.float64)
        ctx, batch = self._ctx, self._batch.batch
        self._ctx.kv_cache_clear()
        for segments in plan_batches(lengths, self.batch_tokens, MAX_SEQUENCES):
            if cancel.is_set():
                raise _Cancelled()
            n = 0
            for seg in segments:
                seq = seg.index % MAX_SEQUENCES  # consecutive inputs: distinct ids in a decode
                for offset, token in enumerate(
                    token_lists[seg.index][seg.start : seg.start + seg.length]
                ):
                    batch.token[n] = token
                    batch.pos[n] = seg.start + offset
                    batch.seq_id[n][0] = seq
                    batch.n_seq_id[n] = 1
                    batch.logits[n] = True  # every token's hidden state is an output
                    n += 1
            batch.n_tokens = n
            ctx.decode(self._batch)
            self.decodes += 1
            pointer = llama_cpp.llama_get_embeddings(ctx.ctx)
            if not pointer:
                raise EmbeddingFailed("the model returned no embeddings")
            states = np.ctypeslib.as_array(pointer, shape=(n, width))
            row = 0
            for seg in segments:
                sums[seg.index] += states[row : row + seg.length].sum(axis=0, dtype=np.float64)
                row += seg.length
                if seg.last:
                    ctx.kv_cache_seq_rm(seg.index % MAX_SEQUENCES, -1, -1)
        return normalize(sums / np.asarray(lengths, dtype=np.float64)[:, None])

    def _free(self) -> None:
        for name in ("_batch", "_ctx", "_model"):  # the context before its model
            obj = getattr(self, name)
            if obj is not None:
                obj.close()
                setattr(self, name, None)
