"""The continuous-batching loop: one worker thread, one llama context, `parallel` sequences.

A step is one `llama_decode` over the next token of every generating sequence (one token per
sequence, each with its own sampler chain), then chunks of the prompts being prefilled, each
chunk in a `llama_decode` of its own. Requests join between steps (FIFO, a waiting request
takes the first free slot); a sequence that finishes or whose consumer left frees its slot at
once, keeping its KV for prefix reuse. The gaps such slots leave between busy ones cost a graph
per step each (`_slots.py`); when no waiting request fills them, the sequences beyond them move
in (`_compact`).

Why generating tokens and prompt chunks never share a call, and a prompt chunk never leaves a
lone token behind: llama.cpp's CPU kernels round differently for one token than for a run of
tokens, so a sequence's numbers would depend on the company it had. Kept apart (with one KV
stream per slot and no flash attention, see `_engine.py`), every generated token is evaluated
alone in its sequence and every prompt token among its own prompt's tokens: a temperature-0
answer is the same alone, in a full batch, after a prefix-cache hit, and on another node
resuming it. Resumed tokens (`resume_tokens`) go in one per step, as they were generated, for
the same reason; the job first yields them as `replayed` pieces, with the text the first node
released for each. What stays apart: an earlier answer's tokens in the cache (the next turn of
a chat) keep the numbers of their one-at-a-time decoding, which a prefill of the same tokens
does not give bit for bit, so such a turn is exact against the node that holds its cache, and
its text the same on a node without it unless two tokens come within rounding of each other.

The stall a long prompt can cause: while other sequences generate, at most `prefill_chunk`
prompt tokens are evaluated per step, so a running stream waits at most one such chunk per
token (on this 2-core machine with the 135M model, 256 prompt tokens are about 60-120 ms)
instead of the whole prompt. With nothing generating, prompts go `n_batch` tokens at a time. What
a step's first prompt leaves of that budget goes to the prompts after it only if they fit whole:
a prompt split to fill it would take one chunk more, and each chunk is a graph with a fixed cost
(here 256 prompt tokens in one chunk took 1.12 s, 32 in one 191 ms: 37 % more per token).

Everything here runs on the worker thread; it talks to the event loop only through the jobs'
reports, which wait in the scheduler's `Outbox` until the worker is about to block (before each
`llama_decode` and before waiting for work; `_job.py` says why).
"""

from __future__ import annotations

import codecs
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_cpp import llama_cpp as C

from llamanet.node.engine._job import Job, Outbox
from llamanet.node.engine._sampler import InvalidGrammar, SequenceSampler, token_logprob
from llamanet.node.engine._slots import Slot, compaction, pending_share, place
from llamanet.node.engine._stops import StopMatcher
from llamanet.node.engine._types import (
    EngineClosed,
    GenerationFailed,
    GenerationResult,
    Piece,
    TokenLogprob,
)

__all__ = ["Scheduler"]

log = logging.getLogger("llamanet.node.engine")

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks one


@dataclass(eq=False)
class _Sequence:
    """One request holding a slot."""

    job: Job
    slot: Slot
    sampler: SequenceSampler
    reused: int
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    sent: int = 0  # generated[:sent] went out in pieces
    next_token: int | None = None  # sampled, not yet in the KV cache
    started: float = field(default_factory=time.perf_counter)
    first: float = 0.0
    last: float = 0.0
    new_tokens: int = 0  # generated here (not counting resumed ones)
    # resumed tokens not in the KV cache yet: decoded one per step, as they were generated, so
    # their keys and values (and the logits after them) are bit for bit the original node's;
    # a prefill of them in one batch takes other kernels and can flip a near-tie at temperature 0
    replay: list[int] = field(default_factory=list)


class Scheduler:
    """Owns the llama context's sequences; `run()` is the worker thread's body."""

    def __init__(
        self,
        *,
        ctx: Any,
        vocab: Any,
        n_vocab: int,
        parallel: int,
        n_batch: int,
        prefill_chunk: int,
        piece: Callable[[int], bytes],
        is_eog: Callable[[int], bool],
        on_step: Callable[[int, int, int], None],
        on_move: Callable[[], None] = lambda: None,
        move_min_tokens: int = 1,
    ) -> None:
        self.ctx = ctx
        self.mem = C.llama_get_memory(ctx)
        self.vocab = vocab
        self.n_vocab = n_vocab
        self.n_batch = n_batch
        self.prefill_chunk = min(prefill_chunk, n_batch)
        self.piece = piece
        self.is_eog = is_eog
        self.on_step = on_step  # (batch tokens, prompt tokens, decode tokens), for the stats
        self.on_move = on_move  # a sequence moved to another slot (`_compact`)
        self.move_min_tokens = move_min_tokens  # tokens still to generate for a move to pay
        self.slots = [Slot(seq_id=i) for i in range(parallel)]
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.waiting: list[Job] = []
        self.running: list[_Sequence] = []
        self.outbox = Outbox()
        self.batch = C.llama_batch_init(n_batch, 0, 1)
        self.closing = False

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while not self.closing:
                self.outbox.flush()
                if self._collect(block=not self.running and not self.waiting):
                    break
                self._drop_cancelled()  # before admission: a freed slot serves this very step
                self._admit()
                self._compact()
                if self.running:
                    self._step()
                elif self.waiting:
                    time.sleep(0.001)  # only deferred jobs: their donor will show up
        finally:
            for seq in list(self.running):
                self._fail(seq, EngineClosed())
            for job in self.waiting:
                job.fail(EngineClosed())
            while True:
                try:
                    left = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if left is not None:
                    left.fail(EngineClosed())
            self.outbox.flush()
            C.llama_batch_free(self.batch)

    def _collect(self, *, block: bool) -> bool:
        """Moves new jobs to `waiting`; True once the engine is closing."""
        try:
            item = self.inbox.get() if block else self.inbox.get_nowait()
            while True:
                if item is None:
                    self.closing = True
                    return True
                item.outbox = self.outbox
                self.waiting.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return False

    # ------------------------------------------------------------------ admission

    def _admit(self) -> None:
        still: list[Job] = []
        for job in self.waiting:
            if job.cancel.is_set():
                continue  # its caller left while it waited; already accounted for
            placement = place(self.slots, job.prompt_tokens)
            if placement is None:
                still.append(job)
                continue
            if pending_share(self.slots, job.prompt_tokens, placement.reuse):
                still.append(job)  # the same prefix is being evaluated right now
                continue
            try:
                self._start(job, placement.slot, placement.reuse, placement.donor)
            except InvalidGrammar as exc:
                job.fail(GenerationFailed(str(exc)))
        self.waiting = still

    def _start(self, job: Job, slot: Slot, reuse: int, donor: Slot | None) -> None:
        params = job.params
        seed = params.seed + job.fork if params.seed is not None else RANDOM_SEED
        sampler = SequenceSampler(self.vocab, self.n_vocab, params, seed & 0xFFFFFFFF)
        if job.resume:  # another node's tokens: the sampler goes to where that node's was
            try:
                sampler.resume(job.resume)
            except InvalidGrammar:
                sampler.close()
                raise
        prompt = len(job.prompt_tokens) - len(job.resume)
        if prompt - 2 < reuse < prompt:  # the prompt's end goes in as a chunk of 2 or more
            reuse = max(0, prompt - 2)
        if donor is not None:  # one KV stream per slot: the copy takes the donor's whole stream
            C.llama_memory_seq_cp(self.mem, donor.seq_id, slot.seq_id, -1, -1)
        C.llama_memory_seq_rm(self.mem, slot.seq_id, reuse, -1)
        slot.tokens = list(job.prompt_tokens[:reuse])
        prompt_end = max(reuse, prompt)
        slot.planned = list(job.prompt_tokens[reuse:prompt_end])
        slot.busy = True
        slot.last_used = time.monotonic()
        seq = _Sequence(job=job, slot=slot, sampler=sampler, reused=reuse)
        seq.stops = StopMatcher(params.stop)
        stopped = False
        replayed: list[Piece] = []
        if job.resume:  # and the stop matcher, the text and the tokens to replay
            ids: list[int] = []
            for token in job.resume:  # the stream was cut after its stop sequence's tokens
                text, hit = seq.stops.feed(seq.decoder.decode(self.piece(token)))
                ids.append(token)
                if text and not stopped:  # the text the first node released for this token
                    replayed.append(Piece(text, tuple(ids), replayed=True))
                    ids = []
                stopped = hit or stopped
            if ids:
                replayed.append(Piece("", tuple(ids), replayed=True))
            seq.generated = list(job.resume)
            seq.sent = len(job.resume)
            seq.replay = list(job.prompt_tokens[prompt_end:])
            if not slot.planned and seq.replay:
                seq.next_token = seq.replay.pop(0)
        self.running.append(seq)
        job.report_started(reuse, len(job.prompt_tokens) - reuse)
        for piece in replayed:  # before anything generated here
            job.emit(piece)
        if stopped:
            self._complete(seq, "stop", hit=True)
        elif len(seq.generated) >= job.max_tokens:
            self._complete(seq, "length")

    def _compact(self) -> None:
        """Moves generating sequences into the gaps between busy slots when no request waits
        to fill them (`_slots.py`): a move copies one KV stream once and saves a graph on every
        step of the rest of the answer, so only sequences with at least `move_min_tokens` still
        to generate move. A sequence in prefill stays: its prompt chunks are graphs of their
        own anyway."""
        if self.waiting or len(self.running) < 2:
            return
        by_slot = {seq.slot.seq_id: seq for seq in self.running}
        if max(by_slot) - min(by_slot) + 1 == len(by_slot):
            return  # one run already: the common case, kept cheap (this runs every step)
        movable = {
            seq_id
            for seq_id, seq in by_slot.items()
            if not seq.slot.planned
            and seq.job.max_tokens - len(seq.generated) >= self.move_min_tokens
        }
        for src, dst in compaction(self.slots, movable):
            seq = by_slot[src.seq_id]
            # the copy resets dst's stream and lands before the next graph, in this very step
            C.llama_memory_seq_cp(self.mem, src.seq_id, dst.seq_id, -1, -1)
            dst.tokens, src.tokens = src.tokens, list(src.tokens)  # src keeps its cache
            dst.busy, src.busy = True, False
            dst.last_used = src.last_used = time.monotonic()
            seq.slot = dst
            self.on_move()

    # ------------------------------------------------------------------ one step

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.job.cancel.is_set()]:
            self._release(seq)
            seq.job.report_cancelled(seq.new_tokens)

    def _step(self) -> None:
        """One token of every generating sequence in one `llama_decode`, then prompt chunks,
        each in a `llama_decode` of its own (the module docstring says why)."""
        # in seq_id order: llama.cpp splits a batch over per-slot KV streams into one graph per
        # run of consecutive seq_ids in batch order, and each graph has a fixed cost
        decoding = sorted(
            (s for s in self.running if s.next_token is not None), key=lambda s: s.slot.seq_id
        )
        decoded = self._decode_tokens(decoding) if decoding else 0
        budget = self.prefill_chunk if decoding else self.n_batch
        prompt_tokens = 0
        for seq in [s for s in self.running if s.slot.planned]:
            if prompt_tokens and len(seq.slot.planned) > budget:
                break  # a prompt begun in the leftover would be one chunk (one graph) more
            n = self._prefill_chunk(seq, max(budget, 2))
            budget -= n
            prompt_tokens += n
        if decoded or prompt_tokens:
            self.on_step(decoded + prompt_tokens, prompt_tokens, decoded)

    def _decode_tokens(self, decoding: list[_Sequence]) -> int:
        outputs: list[tuple[_Sequence, int]] = []
        for n, seq in enumerate(decoding):
            token, seq.next_token = seq.next_token or 0, None
            self._add(n, token, len(seq.slot.tokens), seq.slot.seq_id, True)
            seq.slot.tokens.append(token)
            outputs.append((seq, n))
        if not self._decode(len(decoding), decoding):
            return 0
        for seq, row in outputs:
            self._sample(seq, row)
        return len(decoding)

    def _prefill_chunk(self, seq: _Sequence, budget: int) -> int:
        """Up to `budget` of `seq`'s prompt tokens; never leaves a lone token for later (a
        token evaluated alone takes other CPU kernels than one among others)."""
        slot = seq.slot
        remaining = len(slot.planned)
        n = min(budget, remaining)
        if remaining - n == 1:
            n = remaining - 2 if remaining >= 4 else remaining
        chunk = slot.planned[:n]
        last = n == remaining
        pos = len(slot.tokens)
        for i, token in enumerate(chunk):
            self._add(i, token, pos + i, slot.seq_id, last and i == n - 1)
        slot.tokens.extend(chunk)
        del slot.planned[:n]
        if self._decode(n, [seq]) and last:
            self._sample(seq, n - 1)
        return n

    def _decode(self, n: int, seqs: list[_Sequence]) -> bool:
        self.batch.n_tokens = n
        self.outbox.flush()  # the loop does its work while this call holds no GIL
        status = int(C.llama_decode(self.ctx, self.batch))
        if status != 0:  # the KV of these sequences is now uncertain: they end here
            for seq in seqs:
                self._fail(seq, GenerationFailed(f"llama_decode failed ({status})"))
        return status == 0

    def _add(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _sample(self, seq: _Sequence, row: int) -> None:
        job = seq.job
        if seq.replay:  # a resumed token goes in next, not a sampled one
            seq.next_token = seq.replay.pop(0)
            return
        try:
            token = seq.sampler.sample(self.ctx, row)
        except Exception as exc:  # a grammar with no way forward, most often
            self._fail(seq, GenerationFailed(f"sampling failed: {exc}"))
            return
        now = time.perf_counter()
        if self.is_eog(token):
            self._complete(seq, "stop")
            return
        seq.new_tokens += 1
        if seq.new_tokens == 1:
            seq.first = now
        seq.last = now
        seq.generated.append(token)
        logprob: tuple[TokenLogprob, ...] = ()
        if job.params.logprobs is not None:
            ptr = C.llama_get_logits_ith(self.ctx, row)
            item = token_logprob(ptr, self.n_vocab, token, job.params.logprobs, self.piece)
            seq.logprobs.append(item)
            logprob = (item,)
        text, hit = seq.stops.feed(seq.decoder.decode(self.piece(token)))
        if text or logprob:
            seq.text.append(text)
            job.emit(Piece(text, tuple(seq.generated[seq.sent :]), logprob))
            seq.sent = len(seq.generated)
        if hit:
            self._complete(seq, "stop", hit=True)
        elif len(seq.generated) >= job.max_tokens:
            self._complete(seq, "length")
        else:
            seq.next_token = token

    # ------------------------------------------------------------------ endings

    def _release(self, seq: _Sequence) -> None:
        self.running.remove(seq)
        seq.sampler.close()
        slot = seq.slot
        if slot.planned:  # cut during prefill: the KV beyond what was evaluated is not there
            slot.planned = []
        slot.busy = False
        slot.last_used = time.monotonic()

    def _complete(self, seq: _Sequence, finish: str, *, hit: bool = False) -> None:
        self._release(seq)
        # after a stop-sequence `hit` the matcher holds nothing, and the bytes of a character
        # the decoder holds come after the stop; at the end of generation or of the budget, the
        # text held back was not a stop sequence after all, and a cut character shows as U+FFFD
        tail = seq.stops.flush()
        if not hit:
            tail += seq.decoder.decode(b"", final=True)
        if tail or seq.sent < len(seq.generated):
            seq.text.append(tail)
            seq.job.emit(Piece(tail, tuple(seq.generated[seq.sent :])))
        ended = time.perf_counter()
        n = seq.new_tokens
        tps = (n - 1) / (seq.last - seq.first) if n > 1 and seq.last > seq.first else 0.0
        job = seq.job
        result = GenerationResult(
            text="".join(seq.text),
            finish_reason=finish,
            prompt_tokens=len(job.prompt_tokens) - len(job.resume),
            completion_tokens=len(seq.generated),
            ttft_ms=((seq.first or ended) - seq.started) * 1000,
            tokens_per_second=tps,
            queue_ms=(seq.started - job.admitted_at) * 1000,
            duration_s=ended - seq.started,
            token_ids=seq.generated,
            logprobs=seq.logprobs,
            prompt_tokens_reused=seq.reused,
        )
        job.report_completed(result)

    def _fail(self, seq: _Sequence, error: Exception) -> None:
        if seq in self.running:
            self._release(seq)
        C.llama_memory_seq_rm(self.mem, seq.slot.seq_id, -1, -1)
        seq.slot.tokens = []
        if isinstance(error, EngineClosed):  # a shutdown: the node logs why
            log.info("generation ended: %s", error)
        else:
            log.error("generation failed: %s", error)
        seq.job.fail(error)
