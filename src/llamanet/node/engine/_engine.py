"""`LlamaEngine`: one model, `parallel` slots batched together, a bounded FIFO queue behind them.

Requests are admitted synchronously on the event loop (a full queue becomes an HTTP 503, a
prompt that cannot fit a 400, before any response starts); the `Scheduler` on the worker thread
runs them `parallel` at a time in one llama context (see `_scheduler.py`). The model object
(`_model.py`) serves the weights, tokenization, the chat template and metadata.

Memory: the KV cache holds `parallel x n_ctx` tokens, one stream of `n_ctx` per slot; it is
logged at start. One stream per slot rather than one unified buffer: in a unified buffer a
sequence's cells sit wherever there was room, attention sums them in that order, and the same
greedy request gave different text depending on the cache's history (8 prompts prefilled
together diverged after 6-12 tokens); per-slot streams give the same numbers every time. The
price: sharing a prefix between slots copies the donor's stream instead of sharing its cells.

No flash attention, for the same reason. llama.cpp's CPU flash-attention kernel takes a tiled
path for a chunk of 64 or more tokens of one sequence and a per-row one below that, and they
round differently. So a token's KV depended on the size of the chunk it was evaluated in, and a
prefix reused from another prompt's cache gave other numbers than evaluating the prompt afresh:
the 4 template tokens of a 183-token tool prompt, reused by a 42-token chat, turned a greedy
story about "Kylo" into one about "Pixel" (the swarm's resume test caught it when one node had
served that tool prompt before). It also splits the attention of a lone decoded token over the
threads once the context reaches 512 cells, so two nodes with different `--n-threads` parted
after ~200 tokens. Without it every prompt token gets the same numbers whatever chunk it came
in, from any cache, on any thread count, and a stream resumed on another node continues as the
first would have. Measured here (default model, 2 threads, paired): decoding 1.05-1.27x faster
without it (1 to 16 streams), prompts 0.55-0.81x (250-1000 tokens). llama-cpp-python's own
`Llama` runs without it by default too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from llama_cpp import llama_cpp as C

from llamanet.node.engine._job import Done, Failed, Job
from llamanet.node.engine._model import in_passing_thread, load_model
from llamanet.node.engine._scheduler import Scheduler
from llamanet.node.engine._types import (
    ContextLengthExceeded,
    EngineClosed,
    EngineStats,
    GenerationFailed,
    GenerationResult,
    Piece,
    QueueFull,
    SamplingParams,
)

__all__ = ["LlamaEngine", "default_gpu_layers", "default_parallel", "move_min_tokens"]

log = logging.getLogger("llamanet.node.engine")

_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_EMA = 0.3
PREFILL_CHUNK = 256  # prompt tokens per step while other sequences generate


def _ema(previous: float, sample: float) -> float:
    """Exponential moving average; the first sample is taken as is."""
    return sample if not previous else (1 - _EMA) * previous + _EMA * sample


MAX_DEFAULT_SLOTS = 16
KV_MEMORY_SHARE = 0.25  # of the memory available at start, for the default slots' KV cache


def default_parallel(kv_bytes_per_slot: float, available: int | None = None) -> int:
    """Slots when `--parallel` is not given: 16, or as many as have their KV cache (`n_ctx`
    tokens each) in a quarter of the memory available (`available`, bytes; MemAvailable when
    None), at least 1.

    Why 16 whatever the cores: batching reuses each weight for every sequence of a step, so on
    a CPU a decode step costs about the same up to ~16 sequences (the default model, 2 cores:
    one sequence 10 ms a step, 8 in 25 ms, 16 in 37 ms, 24 in 62-71 ms, 32 in 105-116 ms). At
    16 concurrent streams (2026-12-03, 3 paired rounds) 16 slots gave 1.17-1.44x the tokens/s
    of 8 and a first token 2-4x sooner; at 8 streams and fewer the two are within this
    machine's noise (per-round ratios 0.74-1.12, median 0.96). Again without flash attention
    (3 paired rounds): 16 streams 1.26-1.52x and a first token 4x sooner, 8 streams 0.89-1.05,
    4 streams 0.97-1.11. Why the memory bound: a large model's KV cache per slot is hundreds of
    MB (a 7B at 4096 tokens: 512 MB)."""
    memory = available_memory() if available is None else available
    if memory is None or kv_bytes_per_slot <= 0:
        return MAX_DEFAULT_SLOTS
    fits = int(memory * KV_MEMORY_SHARE // kv_bytes_per_slot)
    return max(1, min(MAX_DEFAULT_SLOTS, fits))


def available_memory() -> int | None:
    """Bytes of memory available for new allocations: MemAvailable on Linux, else the free
    physical pages; None when neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def kv_bytes_per_token(model: Any) -> int:
    """The KV cache's bytes per token of context: K and V in f16 for every layer."""
    n_layer = C.llama_model_n_layer(model)
    n_embd, n_head = C.llama_model_n_embd(model), C.llama_model_n_head(model)
    kv_dim = n_embd * C.llama_model_n_head_kv(model) // max(n_head, 1)
    return int(2 * n_layer * kv_dim * 2)


def context_failure(parallel: int, n_ctx: int, kv_per_token: int, available: int | None) -> str:
    """Why llama.cpp may have refused the context, in the options' terms: mostly a KV cache
    (`parallel` x `n_ctx` tokens) larger than the memory."""
    needed = kv_per_token * parallel * n_ctx / 2**30
    have = f", {available / 2**30:.1f} GiB of memory are available" if available else ""
    return (
        f"llama.cpp could not create the context: {parallel} slots x {n_ctx} tokens need about "
        f"{needed:.1f} GiB of KV cache{have}; lower --parallel or --n-ctx"
    )


def move_min_tokens(model: Any, n_ctx: int) -> int:
    """Tokens a sequence must still generate for its move to another slot to pay: a move
    copies its KV stream (read and written: 2 x `n_ctx` tokens' KV), a graph fewer per step
    saves about a read of the weights (decoding a few tokens is memory-bound). For the
    default model at n_ctx 2048: 47 MB of stream, 98 MB of weights, 1 token."""
    stream = kv_bytes_per_token(model) * n_ctx
    weights = max(int(C.llama_model_size(model)), 1)
    return max(1, math.ceil(2 * stream / weights))


def default_gpu_layers() -> int:
    """Every layer on the GPU when llama.cpp was built with a GPU backend, else none."""
    return -1 if C.llama_supports_gpu_offload() else 0


class LlamaEngine:
    """Owns one model; `submit` admits a request, `stream`/`run` consume it."""

    def __init__(
        self,
        model: Any,
        *,
        model_path: Path,
        model_id: str,
        n_ctx: int,
        parallel: int,
        queue_size: int,
        n_threads: int,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.model = model  # a llama_cpp._internals.LlamaModel
        self.model_path = model_path
        self.model_id = model_id
        self.n_ctx = n_ctx  # per slot
        self.parallel = parallel
        self.queue_size = queue_size
        self.n_gpu_layers = n_gpu_layers
        self.metadata: dict[str, str] = model.metadata()
        self.stats = EngineStats()
        self._closed = False
        self._chat_template = self._make_chat_formatter()
        self._vocab = model.vocab
        self.n_vocab: int = C.llama_vocab_n_tokens(self._vocab)
        self._ctx = self._make_context(model.model, n_threads, n_batch)
        self._window: list[float] = [time.perf_counter(), 0.0, 0]  # last step, busy s, tokens
        self._scheduler = Scheduler(
            ctx=self._ctx,
            vocab=self._vocab,
            n_vocab=self.n_vocab,
            parallel=parallel,
            n_batch=n_batch,
            prefill_chunk=PREFILL_CHUNK,
            piece=self._piece_bytes,
            is_eog=self.is_eog,
            on_step=self._on_step,
            on_move=self._on_move,
            move_min_tokens=move_min_tokens(model.model, n_ctx),
        )
        self._worker = threading.Thread(
            target=self._scheduler.run, name="llamanet-engine", daemon=True
        )
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
        parallel: int | None = None,
        queue_size: int = 8,
        n_gpu_layers: int | None = None,
    ) -> LlamaEngine:
        """Loads the model on a passing thread (it takes a moment; `in_passing_thread` says why
        not an executor's) and starts the worker."""
        threads = n_threads or os.cpu_count() or 1
        gpu_layers = default_gpu_layers() if n_gpu_layers is None else n_gpu_layers

        def build() -> LlamaEngine:
            model = load_model(model_path, n_gpu_layers=gpu_layers)
            return cls(
                model,
                model_path=model_path,
                model_id=model_id,
                n_ctx=n_ctx,
                parallel=parallel or default_parallel(kv_bytes_per_token(model.model) * n_ctx),
                queue_size=queue_size,
                n_threads=threads,
                n_batch=n_batch,
                n_gpu_layers=gpu_layers,
            )

        return await in_passing_thread(build)

    def _make_context(self, model: Any, n_threads: int, n_batch: int) -> Any:
        params = C.llama_context_default_params()
        params.n_ctx = self.parallel * self.n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = self.parallel
        params.n_threads = params.n_threads_batch = n_threads  # one thread team, not two
        params.kv_unified = False  # one stream per slot (the module docstring says why)
        # exact prefix reuse and resume: the module docstring says why, and what it costs
        params.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = C.llama_init_from_model(model, params)
        if not ctx:
            raise GenerationFailed(
                context_failure(
                    self.parallel, self.n_ctx, kv_bytes_per_token(model), available_memory()
                )
            )
        total = C.llama_n_ctx(ctx)
        kv_mib = kv_bytes_per_token(model) * total / 2**20
        log.info(
            "engine: %d slots x %d tokens (KV cache %d tokens, about %.0f MiB), %d threads, "
            "batch %d, %d GPU layers",
            self.parallel, self.n_ctx, total, kv_mib, n_threads, n_batch, self.n_gpu_layers,
        )  # fmt: skip
        return ctx

    def _make_chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.metadata.get("tokenizer.chat_template") or _FALLBACK_CHAT_TEMPLATE
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._piece(self.model.token_eos()),
            bos_token=self._piece(self.model.token_bos()),
            add_generation_prompt=True,
        )

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        data: bytes = self.model.detokenize([token], special=True)
        return data.decode("utf-8", errors="ignore")

    def _piece_bytes(self, token: int) -> bytes:
        data: bytes = self.model.detokenize([token])
        return data

    # ------------------------------------------------------------------ public state

    @property
    def capacity(self) -> int:
        """Requests the node holds at once: one per slot plus the queue."""
        return self.parallel + self.queue_size

    @property
    def utilization(self) -> float:
        return self.stats.held / self.capacity

    @property
    def free_slots(self) -> int:
        return max(0, self.parallel - self.stats.active)

    @property
    def quantization(self) -> str | None:
        name = self.model_path.name.removesuffix(".gguf")
        tail = name.rsplit(".", 1)[-1] if "." in name else ""
        return tail if tail.upper().startswith(("Q", "F", "IQ", "BF")) else None

    def retry_after(self) -> int:
        per_request = self.stats.request_seconds or 2.0
        waves = max(1, math.ceil(self.stats.queued / self.parallel))
        return max(1, math.ceil(per_request * waves))

    # ------------------------------------------------------------------ preparing requests

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        prompt: str = self._chat_template(messages=messages).prompt
        return prompt

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends a generation (end of text, end of turn)."""
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    def detokenize(self, tokens: Sequence[int]) -> str:
        data: bytes = self.model.detokenize(list(tokens))
        return data.decode("utf-8", errors="replace")

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        tokens: list[int] = self.model.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        return tokens

    async def tokenize(
        self, *, prompt: str | None = None, messages: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Prompt tokens of a completion prompt or of chat messages (template from the GGUF)."""
        if messages is not None:
            text = await asyncio.to_thread(self.render_chat, messages)
            return await asyncio.to_thread(self._tokenize_prompt, text)
        return await asyncio.to_thread(self._tokenize_prompt, prompt or "")

    def submit(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        *,
        resume_tokens: Sequence[int] = (),
    ) -> Job:
        """Admits a request or raises at once (`QueueFull`, `ContextLengthExceeded`).

        `resume_tokens` continues a generation another node started (same model, same prompt):
        they count as completion tokens already generated and are not sent again."""
        return self._admit(prompt_tokens, params, 1, list(resume_tokens))[0]

    def submit_n(self, prompt_tokens: list[int], params: SamplingParams, n: int) -> list[Job]:
        """`n` choices of one prompt: the prompt is evaluated once and its KV shared (the
        scheduler holds the other choices back until the first one's prefill is done)."""
        return self._admit(prompt_tokens, params, n, [])

    def _admit(
        self, prompt: list[int], params: SamplingParams, n: int, resume: list[int]
    ) -> list[Job]:
        if self._closed:
            raise EngineClosed()
        if n < 1:
            raise ValueError("n must be at least 1")
        if not prompt:  # nothing to decode: an empty batch would fail every running sequence
            raise ValueError("the prompt has no tokens")
        room = self.n_ctx - len(prompt)
        max_tokens = params.max_tokens if params.max_tokens is not None else max(room, 0)
        if len(prompt) + max_tokens > self.n_ctx or room <= 0 or len(resume) > max_tokens:
            raise ContextLengthExceeded(len(prompt), max_tokens, self.n_ctx)
        if self.stats.held + n > self.capacity:
            self.stats.requests_rejected += 1
            raise QueueFull(self.retry_after())
        loop = asyncio.get_running_loop()
        jobs = [
            Job(list(prompt) + resume, max_tokens, params, loop, self, resume=resume, fork=i)
            for i in range(n)
        ]
        self.stats.queued += n
        self.stats.requests_total += n
        for job in jobs:
            self._scheduler.inbox.put(job)
        return jobs

    # ------------------------------------------------------------------ consuming results

    async def stream(self, job: Job) -> AsyncIterator[Piece | GenerationResult]:
        """Yields pieces as they are generated, then the `GenerationResult`.

        Closing the iterator early (client gone, timeout, task cancelled) cancels the job: a
        queued job never starts, a running one stops within one step.
        """
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, Piece):
                    yield item
                elif isinstance(item, Done):
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

    def begin_close(self) -> None:
        """Stops accepting work; the worker fails what is queued or running (`EngineClosed`)
        within one step and ends."""
        if not self._closed:
            self._closed = True
            self._scheduler.inbox.put(None)

    async def close(self) -> None:
        """`begin_close`, then joins the worker and frees the context."""
        self.begin_close()
        if self._ctx is None:
            return
        await asyncio.to_thread(self._worker.join, 10.0)
        if not self._worker.is_alive() and self._ctx is not None:
            C.llama_free(self._ctx)
            self._ctx = None

    # ------------------------------------------------------------------ job hooks (event loop)

    def _abandon(self, job: Job) -> None:
        """The caller left; a job that never started leaves the queue count at once."""
        job.cancel.set()
        if not job.started and not job.finished:
            job.finished = True
            self.stats.queued -= 1
            self.stats.requests_cancelled += 1

    def job_started(self, job: Job, reused: int, evaluated: int) -> None:
        s = self.stats
        s.prompt_tokens_reused += reused
        s.prefix_cache_hits += 1 if reused else 0
        if job.finished:  # abandoned between the worker's check and now
            return
        job.started = True
        s.queued -= 1
        s.active += 1

    def job_completed(self, job: Job, result: GenerationResult) -> None:
        if not job.finished:  # counters first: whoever reads the result sees them final
            job.finished = True
            s = self.stats
            s.active -= 1 if job.started else 0
            s.tokens_generated += result.completion_tokens - len(job.resume)
            s.requests_completed += 1
            s.ttft_ms = _ema(s.ttft_ms, result.ttft_ms)
            if result.tokens_per_second > 0:
                s.tokens_per_second = _ema(s.tokens_per_second, result.tokens_per_second)
            s.request_seconds = _ema(s.request_seconds, result.duration_s)
        job.events.put_nowait(Done(result))

    def job_cancelled(self, job: Job, tokens: int) -> None:
        if job.finished:
            return
        job.finished = True
        self.stats.active -= 1 if job.started else 0
        self.stats.tokens_generated += tokens
        self.stats.requests_cancelled += 1

    def job_failed(self, job: Job, error: Exception) -> None:
        if not job.finished:
            job.finished = True
            if job.started:
                self.stats.active -= 1
            else:
                self.stats.queued -= 1
            self.stats.requests_failed += 1
        job.events.put_nowait(Failed(error))

    # ------------------------------------------------------------------ step stats (worker)

    def _on_move(self) -> None:
        self.stats.slot_moves += 1

    def _on_step(self, batch_tokens: int, prompt_tokens: int, decode_tokens: int) -> None:
        s = self.stats
        s.decode_steps += 1
        s.batch_tokens = batch_tokens
        s.prompt_tokens_evaluated += prompt_tokens
        # aggregate tokens/s over busy time only: a gap between steps means the engine was idle
        now = time.perf_counter()
        last, busy, tokens = self._window
        if now - last < 0.5:
            busy += now - last
            tokens += decode_tokens
        if busy >= 1.0:
            s.aggregate_tokens_per_second = _ema(s.aggregate_tokens_per_second, tokens / busy)
            busy, tokens = 0.0, 0
        self._window = [now, busy, tokens]
