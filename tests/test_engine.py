"""The continuous-batching engine on the real model, in process (no HTTP): sequences batched
together do not disturb each other, cancellation and long prompts cost at most one step, prefixes
are reused and shared, the sampler chain honours every parameter, resume and n-choices, and the
counters are final the moment a result is delivered.

Steps are counted with `stats.decode_steps` (one `llama_decode` per step), never with a clock.
Where a step number must be exact, it is read on the worker thread at the moment the scheduler
acts (a wrapper around one job's `emit` / `report_started`): the event loop may be scheduled late
on a loaded machine, the worker's own order never is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llamanet.node.engine import (
    ContextLengthExceeded,
    EngineClosed,
    GenerationResult,
    Job,
    LlamaEngine,
    Piece,
    QueueFull,
    SamplingParams,
)
from llamanet.node.engine._scheduler import Scheduler

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="session")]

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, logprobs=2)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To bake bread, you first need",
    "import numpy as np\nx = np.arange(",
    "The largest planet in the solar system is",
    "Dear Sir or Madam, I am writing to",
]


@dataclass
class Streamed:
    """What a consumer saw: every piece generated (`replayed`: those of resumed tokens, apart),
    then the result."""

    pieces: list[Piece] = field(default_factory=list)
    result: GenerationResult | None = None
    replayed: list[Piece] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def token_ids(self) -> list[int]:
        return [t for p in self.pieces for t in p.token_ids]


async def consume(
    engine: LlamaEngine, job: Job, *, stop_after: int | None = None, started: Any = None
) -> Streamed:
    """Streams `job`; with `stop_after`, closes the stream after that many pieces (the client
    left). `started` (an asyncio.Event) is set at the first piece."""
    seen = Streamed()
    stream: AsyncIterator[Piece | GenerationResult] = engine.stream(job)
    try:
        async for item in stream:
            if isinstance(item, GenerationResult):
                seen.result = item
                break
            if item.replayed:
                assert not seen.pieces, "a replayed piece after a generated one"
                seen.replayed.append(item)
                continue
            seen.pieces.append(item)
            if started is not None:
                started.set()
            if stop_after is not None and len(seen.pieces) >= stop_after:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return seen


async def generate(engine: LlamaEngine, prompt: str, params: SamplingParams, **kw: Any) -> Streamed:
    tokens = await engine.tokenize(prompt=prompt)
    return await consume(engine, engine.submit(tokens, params, **kw))


def record_steps(engine: LlamaEngine, job: Job, name: str) -> list[int]:
    """Wraps one job's worker-side method: the list gets `stats.decode_steps` at each call."""
    steps: list[int] = []
    original: Callable[..., None] = getattr(job, name)

    def wrapper(*args: Any) -> None:
        steps.append(engine.stats.decode_steps)
        original(*args)

    setattr(job, name, wrapper)
    return steps


def assert_same_answer(got: GenerationResult, ref: GenerationResult, what: str) -> None:
    """At temperature 0 a sequence's answer is token for token the same whatever ran beside it
    (one KV stream per slot, generating tokens and prompt chunks in separate decodes: see the
    scheduler's docstring). Cross-talk or a cache mix-up would change it."""
    assert got.token_ids == ref.token_ids, (what, got.text, ref.text)
    assert got.text == ref.text and got.finish_reason == ref.finish_reason, what


def check_usage(seen: Streamed, prompt_tokens: int) -> GenerationResult:
    """Exact usage: what was streamed is what the result says."""
    r = seen.result
    assert r is not None
    assert r.finish_reason in ("stop", "length")
    assert r.completion_tokens == len(seen.token_ids) == len(r.token_ids)
    assert seen.token_ids == r.token_ids
    assert seen.text == r.text
    assert r.prompt_tokens == prompt_tokens
    return r


async def wait_idle(engine: LlamaEngine) -> None:
    """Everything asked for is finished on the worker and in the books."""
    for _ in range(2000):
        if not engine.stats.active and not engine.stats.queued and not engine._scheduler.running:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"engine not idle: {engine.stats}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def engine(model_path: Path) -> AsyncIterator[LlamaEngine]:
    eng = await LlamaEngine.load(
        model_path, model_id="test", n_ctx=1024, n_threads=1, parallel=8, queue_size=4
    )
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
async def alone(engine: LlamaEngine) -> dict[str, Streamed]:
    """Each of PROMPTS run alone at temperature 0: the reference for the batched runs."""
    out: dict[str, Streamed] = {}
    for prompt in PROMPTS:
        out[prompt] = await generate(engine, prompt, GREEDY)
    return out


# ---------------------------------------------------------------- batching


async def test_eight_concurrent_requests_get_their_own_answers(
    engine: LlamaEngine, alone: dict[str, Streamed]
) -> None:
    tokens = [await engine.tokenize(prompt=p) for p in PROMPTS]
    jobs = [engine.submit(t, GREEDY) for t in tokens]
    seen = await asyncio.gather(*(consume(engine, j) for j in jobs))
    for prompt, toks, s in zip(PROMPTS, tokens, seen, strict=True):
        r = check_usage(s, len(toks))
        ref = alone[prompt].result
        assert ref is not None
        assert_same_answer(r, ref, prompt)
    # no two answers are the same text: the sequences did not leak into each other
    assert len({s.text for s in seen}) == len(PROMPTS)


async def test_greedy_text_is_the_same_alone_and_joining_a_full_batch(
    engine: LlamaEngine, alone: dict[str, Streamed]
) -> None:
    """The target joins while 7 others are already generating (its prefill shares their step)."""
    target = PROMPTS[2]
    others = [p for p in PROMPTS if p != target]
    params = SamplingParams(temperature=0.0, max_tokens=48)
    first = asyncio.Event()
    tasks = [
        asyncio.create_task(
            consume(
                engine,
                engine.submit(await engine.tokenize(prompt=p), params),
                started=first if i == 0 else None,
            )
        )
        for i, p in enumerate(others)
    ]
    await first.wait()
    joined = await generate(engine, target, GREEDY)
    await asyncio.gather(*tasks)
    assert joined.result is not None and alone[target].result is not None
    assert_same_answer(joined.result, alone[target].result, target)


async def test_cancelling_one_of_eight_frees_its_slot_within_one_step(
    engine: LlamaEngine, alone: dict[str, Streamed]
) -> None:
    await wait_idle(engine)
    params = GREEDY
    tokens = [await engine.tokenize(prompt=p) for p in PROMPTS]
    jobs = [engine.submit(t, params) for t in tokens]
    ninth = engine.submit(await engine.tokenize(prompt="A haiku about the sea:"), params)
    started_at = record_steps(engine, ninth, "report_started")
    assert engine.stats.queued >= 1
    cancelled_before = engine.stats.requests_cancelled

    cancel_step: list[int] = []
    active_after_cancel: list[int] = []

    async def cancel_one() -> Streamed:
        seen = await consume(engine, jobs[3], stop_after=3)  # closes the stream
        cancel_step.append(engine.stats.decode_steps)
        await asyncio.sleep(0)
        return seen

    tasks = [
        asyncio.create_task(cancel_one() if i == 3 else consume(engine, j))
        for i, j in enumerate(jobs)
    ]
    ninth_task = asyncio.create_task(consume(engine, ninth))
    seen = await asyncio.gather(*tasks)
    ninth_seen = await ninth_task
    active_after_cancel.append(engine.stats.active)

    assert seen[3].result is None and len(seen[3].pieces) == 3
    assert engine.stats.requests_cancelled == cancelled_before + 1
    # the 9th waited for a slot and got the cancelled one at the next step boundary
    assert len(started_at) == 1
    assert cancel_step[0] <= started_at[0] <= cancel_step[0] + 1, (cancel_step, started_at)
    check_usage(ninth_seen, len(await engine.tokenize(prompt="A haiku about the sea:")))
    for i, (prompt, toks, s) in enumerate(zip(PROMPTS, tokens, seen, strict=True)):
        if i == 3:
            continue
        r = check_usage(s, len(toks))
        ref = alone[prompt].result
        assert ref is not None
        assert_same_answer(r, ref, prompt)
    await wait_idle(engine)


async def test_a_gap_between_busy_slots_is_closed_and_the_moved_answer_is_unchanged(
    engine: LlamaEngine,
) -> None:
    """Three streams in three consecutive slots; the middle one is cancelled and nothing waits
    to fill its slot: the sequence in the highest slot moves into it (one KV stream copied),
    and both remaining answers are token for token what they are alone."""
    await wait_idle(engine)
    no_end = tuple((t, float("-inf")) for t in range(engine.n_vocab) if engine.is_eog(t))
    params = SamplingParams(temperature=0.0, max_tokens=64, logit_bias=no_end)
    prompts = PROMPTS[:3]
    tokens = [await engine.tokenize(prompt=p) for p in prompts]
    alone = [await generate(engine, p, params) for p in prompts]
    moves = engine.stats.slot_moves
    jobs = [engine.submit(t, params) for t in tokens]
    for _ in range(5000):  # the answers are 64 tokens: they are all still generating
        if all(j.started for j in jobs):
            break
        await asyncio.sleep(0.002)
    slot_of = {seq.job: seq.slot.seq_id for seq in list(engine._scheduler.running)}
    by_slot = sorted(jobs, key=lambda j: slot_of[j])
    assert [slot_of[j] for j in by_slot] == list(
        range(slot_of[by_slot[0]], slot_of[by_slot[0]] + 3)
    )
    low, middle, high = by_slot
    await consume(engine, middle, stop_after=1)  # the client leaves: a gap
    seen = {j: await consume(engine, j) for j in (low, high)}
    await wait_idle(engine)
    assert engine.stats.slot_moves == moves + 1
    for job, ref in zip(jobs, alone, strict=True):
        if job is not middle:
            got, want = seen[job].result, ref.result
            assert got is not None and want is not None
            assert_same_answer(got, want, "moved" if job is high else "stayed")


async def test_cancelling_drops_active_within_one_step(engine: LlamaEngine) -> None:
    await wait_idle(engine)
    params = SamplingParams(temperature=0.0, max_tokens=200)
    jobs = [engine.submit(await engine.tokenize(prompt=p), params) for p in PROMPTS[:4]]
    cancelled = jobs[0]
    cancelled_steps = record_steps(engine, cancelled, "report_cancelled")
    firsts = [asyncio.Event() for _ in jobs]
    tasks = [
        asyncio.create_task(consume(engine, j, started=e))
        for j, e in zip(jobs, firsts, strict=True)
    ]
    for e in firsts:
        await e.wait()
    assert engine.stats.active == 4
    tasks[0].cancel()  # the consumer goes away (as a disconnected client's task is)
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    at_cancel = engine.stats.decode_steps
    for _ in range(2000):
        if engine.stats.active == 3:
            break
        await asyncio.sleep(0.002)
    assert engine.stats.active == 3
    assert len(cancelled_steps) == 1 and cancelled_steps[0] <= at_cancel + 1
    for t in tasks[1:]:
        t.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)
    await wait_idle(engine)


# ---------------------------------------------------------------- prefix cache


async def test_second_chat_turn_reuses_the_first_turns_prefix(engine: LlamaEngine) -> None:
    await wait_idle(engine)
    turn1 = [{"role": "user", "content": "Name a fruit that is yellow. Answer in one word."}]
    t1 = await engine.tokenize(messages=turn1)
    first = await consume(engine, engine.submit(t1, SamplingParams(temperature=0, max_tokens=16)))
    assert first.result is not None
    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.result.text},
        {"role": "user", "content": "And a red one?"},
    ]
    t2 = await engine.tokenize(messages=turn2)
    assert t2[: len(t1)] == t1
    reused0, evaluated0 = engine.stats.prompt_tokens_reused, engine.stats.prompt_tokens_evaluated
    second = await consume(engine, engine.submit(t2, SamplingParams(temperature=0, max_tokens=8)))
    r = check_usage(second, len(t2))
    assert len(t1) <= r.prompt_tokens_reused < len(t2)
    assert engine.stats.prompt_tokens_reused - reused0 == r.prompt_tokens_reused
    assert engine.stats.prompt_tokens_evaluated - evaluated0 == len(t2) - r.prompt_tokens_reused


async def test_a_prefix_from_another_prompts_cache_gives_the_fresh_numbers(
    model_path: Path,
) -> None:
    """A chat's first tokens come from the cache of a long prompt that began the same way: its
    answer is bit for bit what a fresh engine gives. With llama.cpp's flash attention the long
    prompt's tokens went through its tiled kernel (a chunk of 64 tokens or more) and the chat's
    own through the per-row one, and the greedy text changed (`_engine.py` says more)."""
    chat = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
    shared = 8  # the chat template's opening: "<|im_start|>system\nYou are a helpful AI"
    params = SamplingParams(temperature=0.0, max_tokens=40, logprobs=1)

    async def answer(before: str | None) -> GenerationResult:
        """The chat's answer on a fresh engine, after `before` (its first `shared` tokens the
        chat's, then the text's) when given."""
        eng = await LlamaEngine.load(
            model_path, model_id="test-prefix", n_ctx=1024, n_threads=1, parallel=2, queue_size=1
        )
        try:
            tokens = await eng.tokenize(messages=chat)
            if before is not None:
                rest = (await eng.tokenize(prompt=before))[1:]
                assert len(rest) >= 64  # one chunk of the tiled kind
                other = tokens[:shared] + rest
                await consume(eng, eng.submit(other, SamplingParams(temperature=0, max_tokens=2)))
            return check_usage(await consume(eng, eng.submit(tokens, params)), len(tokens))
        finally:
            await eng.close()

    fresh = await answer(None)
    cached = await answer(" ".join(PROMPTS) * 4)  # ~200 tokens, none of them the chat's
    assert cached.prompt_tokens_reused == shared
    assert cached.token_ids == fresh.token_ids, (cached.text, fresh.text)
    assert [lp.logprob for lp in cached.logprobs] == [lp.logprob for lp in fresh.logprobs]


async def test_eight_identical_prompts_are_prefilled_once(engine: LlamaEngine) -> None:
    await wait_idle(engine)
    prompt = (
        "Here is a list of twelve unusual animals and one fact about each of them, written for "
        "curious children who like to read about nature and far away places: 1. The axolotl"
    )
    tokens = await engine.tokenize(prompt=prompt)
    assert len(tokens) > 32
    evaluated0, reused0 = engine.stats.prompt_tokens_evaluated, engine.stats.prompt_tokens_reused
    params = SamplingParams(temperature=0.0, max_tokens=12)
    jobs = [engine.submit(tokens, params) for _ in range(8)]
    seen = await asyncio.gather(*(consume(engine, j) for j in jobs))
    evaluated = engine.stats.prompt_tokens_evaluated - evaluated0
    reused = engine.stats.prompt_tokens_reused - reused0
    # one full prefill, then each of the other 7 copies it and evaluates only the last two
    # prompt tokens (never one alone: the first token's logits must be the same as the first's)
    assert evaluated <= len(tokens) + 2 * 7, (evaluated, len(tokens))
    assert reused >= 7 * (len(tokens) - 2)
    texts = {check_usage(s, len(tokens)).text for s in seen}
    assert len(texts) == 1


# ---------------------------------------------------------------- sampling


async def test_seed_determinism_at_temperature_0_8(engine: LlamaEngine) -> None:
    prompt = "Write one sentence about a dragon:"
    params = SamplingParams(temperature=0.8, max_tokens=24, seed=1234)
    a = await generate(engine, prompt, params)
    b = await generate(engine, prompt, params)
    assert a.result is not None and b.result is not None
    assert a.result.token_ids == b.result.token_ids and a.text == b.text
    others = [
        await generate(engine, prompt, SamplingParams(temperature=0.8, max_tokens=24, seed=s))
        for s in (1, 2, 3, 4)
    ]
    assert len({a.text, *(o.text for o in others)}) >= 3


async def test_logit_bias_moves_and_forces_tokens(engine: LlamaEngine) -> None:
    prompt = "The capital of France is"
    tokens = await engine.tokenize(prompt=prompt)
    base = await generate(engine, prompt, SamplingParams(temperature=0.0, max_tokens=4))
    assert base.result is not None
    top = base.result.token_ids[0]
    banned = await generate(
        engine,
        prompt,
        SamplingParams(temperature=0.0, max_tokens=4, logit_bias=((top, -1000.0),)),
    )
    assert banned.result is not None
    assert top not in banned.result.token_ids
    forced_token = (await engine.tokenize(prompt=" banana"))[-1]
    forced = await consume(
        engine,
        engine.submit(
            tokens, SamplingParams(temperature=0.0, max_tokens=3, logit_bias=((forced_token, 100),))
        ),
    )
    assert forced.result is not None
    assert forced.result.token_ids == [forced_token] * 3


async def test_hand_grammar_constrains_the_output(engine: LlamaEngine) -> None:
    grammar = 'root ::= ("yes" | "no") "."'
    seen = await generate(
        engine,
        "Is the sky green? Answer:",
        SamplingParams(temperature=0.0, max_tokens=16, grammar=grammar),
    )
    r = check_usage(seen, len(await engine.tokenize(prompt="Is the sky green? Answer:")))
    assert r.text in ("yes.", "no.")
    assert r.finish_reason == "stop"


async def test_json_schema_grammar_output_parses(engine: LlamaEngine) -> None:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    grammar = json_schema_to_gbnf(json.dumps(schema))
    seen = await generate(
        engine,
        "Describe a person as JSON:",
        SamplingParams(temperature=0.0, max_tokens=64, grammar=grammar),
    )
    assert seen.result is not None and seen.result.finish_reason == "stop", seen.text
    data = json.loads(seen.result.text)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


async def test_an_invalid_grammar_fails_the_request_only(engine: LlamaEngine) -> None:
    failed0 = engine.stats.requests_failed
    tokens = await engine.tokenize(prompt="Hello")
    job = engine.submit(tokens, SamplingParams(max_tokens=4, grammar="root ::= ("))
    with pytest.raises(Exception, match="grammar"):
        await engine.run(job)
    assert engine.stats.requests_failed == failed0 + 1
    ok = await generate(engine, "Hello", SamplingParams(temperature=0, max_tokens=2))
    assert ok.result is not None
    await wait_idle(engine)


async def test_logprobs_shape(engine: LlamaEngine) -> None:
    seen = await generate(
        engine, "The capital of France is", SamplingParams(temperature=0, max_tokens=8, logprobs=3)
    )
    r = seen.result
    assert r is not None
    assert len(r.logprobs) == r.completion_tokens == len(r.token_ids)
    assert [lp for p in seen.pieces for lp in p.logprobs] == r.logprobs
    for lp, token in zip(r.logprobs, r.token_ids, strict=True):
        assert lp.token_id == token
        assert lp.logprob <= 0.0
        assert len(lp.top) == 3
        values = [t.logprob for t in lp.top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0.0 for v in values)
        # greedy: the chosen token is the most likely one
        assert lp.logprob == pytest.approx(values[0], abs=1e-6)
        assert lp.top[0].token == lp.token and lp.top[0].bytes == lp.bytes
        assert bytes(lp.bytes).decode("utf-8", errors="replace") == lp.token
    off = await generate(
        engine, "The capital of France is", SamplingParams(temperature=0, max_tokens=4)
    )
    assert off.result is not None and off.result.logprobs == []
    assert off.result.completion_tokens == 4
    zero = await generate(
        engine, "The capital of France is", SamplingParams(temperature=0, max_tokens=4, logprobs=0)
    )
    assert zero.result is not None and all(lp.top == () for lp in zero.result.logprobs)
    assert len(zero.result.logprobs) == 4


# ---------------------------------------------------------------- resume and n choices

STORY = "Write a long story about a robot who learns to paint. Chapter one:"


async def test_resume_continues_exactly(engine: LlamaEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=60)
    tokens = await engine.tokenize(prompt=STORY)
    full = await consume(engine, engine.submit(tokens, params))
    assert full.result is not None and full.result.completion_tokens == 60
    ids = full.result.token_ids
    resumed = await consume(engine, engine.submit(tokens, params, resume_tokens=ids[:25]))
    r = resumed.result
    assert r is not None
    assert engine.detokenize(ids[:25]) + r.text == full.result.text
    assert r.completion_tokens == 60 and r.token_ids == ids
    assert r.prompt_tokens == len(tokens)
    assert resumed.token_ids == ids[25:]  # the resumed tokens are not sent again
    replayed = resumed.replayed  # but replayed, with the text the first node released
    assert [t for p in replayed for t in p.token_ids] == ids[:25]
    assert "".join(p.text for p in replayed) + r.text == full.result.text
    assert r.finish_reason == "length"


async def test_resume_with_a_stop_sequence(engine: LlamaEngine) -> None:
    tokens = await engine.tokenize(prompt=STORY)
    probe = await consume(
        engine, engine.submit(tokens, SamplingParams(temperature=0, max_tokens=60))
    )
    assert probe.result is not None
    ids = probe.result.token_ids
    # a stop sequence from late in the text, starting with its first letter (held back often)
    later = engine.detokenize(ids[:40])
    stop = probe.result.text[len(later) :].lstrip()[:6]
    assert len(stop) >= 3
    params = SamplingParams(temperature=0.0, max_tokens=60, stop=(stop,))
    full = await consume(engine, engine.submit(tokens, params))
    assert full.result is not None and full.result.finish_reason == "stop"
    assert stop not in full.result.text
    # cut where a real client would have been cut: after a piece; prefer a piece after which
    # text was held back (the resuming engine must hold back the same text)
    boundaries: list[tuple[int, str]] = []
    count, sent = 0, ""
    for piece in full.pieces:
        count += len(piece.token_ids)
        sent += piece.text
        boundaries.append((count, sent))
    held = [(n, s) for n, s in boundaries if s != engine.detokenize(full.token_ids[:n]) and n > 5]
    cuts = held[:2] + [b for b in boundaries if 20 <= b[0] <= 30][:1]
    for n, sent_before in cuts:
        resumed = await consume(
            engine, engine.submit(tokens, params, resume_tokens=full.result.token_ids[:n])
        )
        r = resumed.result
        assert r is not None
        assert sent_before + r.text == full.result.text, (n, sent_before, r.text)
        assert "".join(p.text for p in resumed.replayed) == sent_before  # held back: not in it
        assert r.token_ids == full.result.token_ids and r.finish_reason == "stop"
        assert r.completion_tokens == full.result.completion_tokens


async def test_resume_with_a_grammar(engine: LlamaEngine) -> None:
    grammar = 'root ::= "[" item ("," item)* "]"\nitem ::= [0-9]+'
    prompt = "Count from 1 to 30 as a JSON array of numbers:"
    tokens = await engine.tokenize(prompt=prompt)
    params = SamplingParams(temperature=0.0, max_tokens=40, grammar=grammar)
    full = await consume(engine, engine.submit(tokens, params))
    assert full.result is not None and full.result.completion_tokens >= 12, full.text
    ids = full.result.token_ids
    cut = len(ids) // 2
    resumed = await consume(engine, engine.submit(tokens, params, resume_tokens=ids[:cut]))
    assert resumed.result is not None
    assert engine.detokenize(ids[:cut]) + resumed.result.text == full.result.text
    assert resumed.result.token_ids == ids
    if full.result.finish_reason == "stop":
        json.loads(full.result.text)


async def test_resume_of_everything_ends_at_once(engine: LlamaEngine) -> None:
    tokens = await engine.tokenize(prompt=STORY)
    params = SamplingParams(temperature=0.0, max_tokens=10)
    full = await consume(engine, engine.submit(tokens, params))
    assert full.result is not None
    done = await consume(engine, engine.submit(tokens, params, resume_tokens=full.result.token_ids))
    assert done.result is not None and done.result.text == ""
    assert done.result.completion_tokens == 10 and done.result.finish_reason == "length"
    with pytest.raises(ContextLengthExceeded):
        engine.submit(tokens, params, resume_tokens=[*full.result.token_ids, 1])
    await wait_idle(engine)


async def test_submit_n_evaluates_the_prompt_once_with_seeds_seed_plus_i(
    engine: LlamaEngine,
) -> None:
    await wait_idle(engine)
    prompt = (
        "Three different names for a small grey cat who lives in a lighthouse by the sea and "
        "watches the ships come in every evening. Name:"
    )
    tokens = await engine.tokenize(prompt=prompt)
    assert len(tokens) > 24
    params = SamplingParams(temperature=0.8, max_tokens=16, seed=77)
    evaluated0 = engine.stats.prompt_tokens_evaluated
    jobs = engine.submit_n(tokens, params, 3)
    assert [j.fork for j in jobs] == [0, 1, 2]
    seen = await asyncio.gather(*(consume(engine, j) for j in jobs))
    evaluated = engine.stats.prompt_tokens_evaluated - evaluated0
    # once, and the last two prompt tokens again for each other choice (never one alone)
    assert evaluated <= len(tokens) + 2 * 2, (evaluated, len(tokens))
    results = [check_usage(s, len(tokens)) for s in seen]
    for i, r in enumerate(results):
        single = await generate(
            engine, prompt, SamplingParams(temperature=0.8, max_tokens=16, seed=77 + i)
        )
        assert single.result is not None
        assert single.result.token_ids == r.token_ids, i
    assert len({r.text for r in results}) >= 2
    with pytest.raises(ValueError):
        engine.submit_n(tokens, params, 0)


# ---------------------------------------------------------------- admission


async def test_queue_full_beyond_parallel_plus_queue_size(engine: LlamaEngine) -> None:
    await wait_idle(engine)
    tokens = await engine.tokenize(prompt="Tell me about the history of Rome.")
    params = SamplingParams(temperature=0.0, max_tokens=400)
    jobs = [engine.submit(tokens, params) for _ in range(engine.capacity)]
    tasks = [asyncio.create_task(engine.run(j)) for j in jobs]
    rejected0 = engine.stats.requests_rejected
    with pytest.raises(QueueFull) as info:
        engine.submit(tokens, params)
    assert info.value.retry_after >= 1
    assert engine.stats.requests_rejected == rejected0 + 1
    with pytest.raises(QueueFull):
        engine.submit_n(tokens, params, 2)
    await asyncio.sleep(0.05)  # let every consumer start: a task cancelled before it first runs
    # never enters stream(), so its job is not abandoned (it runs to max_tokens)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await wait_idle(engine)
    ok = await generate(engine, "Hi", SamplingParams(temperature=0, max_tokens=2))
    assert ok.result is not None


async def test_context_length_exceeded(engine: LlamaEngine) -> None:
    short = await engine.tokenize(prompt="Hello")
    with pytest.raises(ContextLengthExceeded):
        engine.submit(short, SamplingParams(max_tokens=engine.n_ctx))
    with pytest.raises(ContextLengthExceeded):
        engine.submit([short[-1]] * engine.n_ctx, SamplingParams(max_tokens=None))
    with pytest.raises(ContextLengthExceeded):
        engine.submit([short[-1]] * (engine.n_ctx - 4), SamplingParams(max_tokens=8))
    # max_tokens None: the rest of the context
    fits = engine.submit([short[-1]] * (engine.n_ctx - 2), SamplingParams(temperature=0))
    assert fits.max_tokens == 2
    r = await engine.run(fits)
    assert r.completion_tokens <= 2


async def test_an_empty_prompt_is_refused_at_admission(engine: LlamaEngine) -> None:
    """An empty prompt would make an empty batch, and a failed llama_decode fails every
    sequence running with it."""
    with pytest.raises(ValueError, match="no tokens"):
        engine.submit([], SamplingParams(max_tokens=4))


async def test_counters_are_final_when_the_result_arrives(engine: LlamaEngine) -> None:
    """Issue 10's flake: the old engine updated `active` after handing out the result."""
    await wait_idle(engine)
    tokens = await engine.tokenize(prompt="Say hi.")
    for i in range(60):
        completed = engine.stats.requests_completed
        params = SamplingParams(temperature=0.0, max_tokens=1 + i % 3)
        r = await engine.run(engine.submit(tokens, params))
        assert engine.stats.active == 0, i
        assert engine.stats.queued == 0, i
        assert engine.stats.requests_completed == completed + 1, i
        assert r.completion_tokens >= 1
    # the same through stream(): the result item comes after the books are closed
    for i in range(20):
        async for item in engine.stream(engine.submit(tokens, SamplingParams(max_tokens=2))):
            if isinstance(item, GenerationResult):
                assert engine.stats.active == 0 and engine.stats.queued == 0, i


async def test_counters_idle_after_everything(engine: LlamaEngine) -> None:
    await wait_idle(engine)
    s = engine.stats
    assert s.active == 0 and s.queued == 0
    assert s.requests_completed + s.requests_cancelled + s.requests_failed == s.requests_total
    assert s.requests_cancelled >= 2 and s.requests_failed >= 1 and s.requests_rejected >= 2
    assert s.decode_steps > 0 and s.tokens_generated > 0
    assert s.prompt_tokens_reused > 0 and s.prefix_cache_hits > 0
    assert engine.utilization == 0.0 and engine.free_slots == engine.parallel


# ---------------------------------------------------------------- long prompts


@pytest.fixture(scope="module")
async def long_engine(model_path: Path) -> AsyncIterator[LlamaEngine]:
    eng = await LlamaEngine.load(
        model_path, model_id="test-long", n_ctx=2048, n_threads=1, parallel=3, queue_size=2
    )
    yield eng
    await eng.close()


async def test_a_long_prompt_does_not_stall_running_streams(long_engine: LlamaEngine) -> None:
    eng = long_engine
    # logprobs=0: every token is its own piece, so a step without a piece is a step without a token;
    # no end of text, so both streams run their 220 tokens (how soon a greedy answer ends depends
    # on the CPU's kernels: one of these ended after 133 tokens on an AVX2-only machine)
    no_end = tuple((t, float("-inf")) for t in range(eng.n_vocab) if eng.is_eog(t))
    params = SamplingParams(temperature=0.0, max_tokens=220, logprobs=0, logit_bias=no_end)
    prompts = [await eng.tokenize(prompt=p) for p in PROMPTS[:2]]
    running = [eng.submit(t, params) for t in prompts]
    emitted = [record_steps(eng, j, "emit") for j in running]
    firsts = [asyncio.Event() for _ in running]
    tasks = [
        asyncio.create_task(consume(eng, j, started=e))
        for j, e in zip(running, firsts, strict=True)
    ]
    for e in firsts:
        await e.wait()
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    long_prompt = sentence * 110
    long_tokens = await eng.tokenize(prompt=long_prompt)
    assert 1300 <= len(long_tokens) <= 1700, len(long_tokens)
    long_job = eng.submit(long_tokens, SamplingParams(temperature=0.0, max_tokens=8))
    long_started = record_steps(eng, long_job, "report_started")
    long_emitted = record_steps(eng, long_job, "emit")
    long_seen = await consume(eng, long_job)
    seen = await asyncio.gather(*tasks)
    check_usage(long_seen, len(long_tokens))

    prefill_from, prefill_to = long_started[0], long_emitted[0]
    # chunked: the prompt took several steps (256 tokens each, shared with the decode tokens)
    assert prefill_to - prefill_from >= len(long_tokens) // 256, (prefill_from, prefill_to)
    for steps, s, toks in zip(emitted, seen, prompts, strict=True):
        assert check_usage(s, len(toks)).completion_tokens == 220
        assert len(steps) == len(s.pieces) == 220
        # the stream was running during the whole prefill
        assert steps[0] < prefill_from and steps[-1] > prefill_to
        window = [x for x in steps if prefill_from - 1 <= x <= prefill_to + 1]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        assert max(gaps) <= 2, gaps  # at most one step without a token
        all_gaps = [b - a for a, b in itertools.pairwise(steps)]
        assert max(all_gaps) <= 2, all_gaps


async def test_prompts_arriving_together_go_in_whole(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a stream runs, a step evaluates up to 256 prompt tokens. Three ~140-token prompts
    arriving together: the second does not fit what the first leaves, and splitting it to fill
    that would cost a chunk (a graph) more, so each prompt goes in whole, one step each."""
    chunks: list[tuple[Job, int]] = []
    original = Scheduler._decode

    def traced(self: Scheduler, n: int, seqs: list[Any]) -> bool:
        if len(seqs) == 1 and n > 1:  # a prompt chunk (generating tokens go one per sequence)
            chunks.append((seqs[0].job, n))
        return original(self, n, seqs)

    monkeypatch.setattr(Scheduler, "_decode", traced)
    no_end = tuple((t, float("-inf")) for t in range(engine.n_vocab) if engine.is_eog(t))
    running = engine.submit(
        await engine.tokenize(prompt=PROMPTS[0]),
        SamplingParams(temperature=0.0, max_tokens=120, logit_bias=no_end),
    )
    first = asyncio.Event()
    stream = asyncio.create_task(consume(engine, running, started=first))
    await first.wait()
    sentence = " the quick brown fox jumps over the lazy dog near the river bank."
    prompts = [await engine.tokenize(prompt=name + sentence * 10) for name in ("Ada", "Bo", "Cy")]
    assert all(130 <= len(p) <= 200 for p in prompts), [len(p) for p in prompts]
    jobs = [engine.submit(p, SamplingParams(temperature=0.0, max_tokens=4)) for p in prompts]
    results = await asyncio.gather(*(consume(engine, j) for j in jobs))
    for job, seen, prompt in zip(jobs, results, prompts, strict=True):
        check_usage(seen, len(prompt))
        assert len([n for j, n in chunks if j is job]) == 1, [
            (j.prompt_tokens[:2], n) for j, n in chunks
        ]
    assert (await stream).result is not None
    await wait_idle(engine)


@pytest.mark.timeout(45)
async def test_close_fails_queued_jobs(model_path: Path) -> None:
    eng = await LlamaEngine.load(
        model_path, model_id="test-close", n_ctx=512, n_threads=1, parallel=1, queue_size=3
    )
    tokens = await eng.tokenize(prompt="Tell me a very long story.")
    # the end-of-generation tokens biased away: an answer ending before its first piece (the
    # model may well end at once on this bare prompt) would leave `first` unset forever
    no_end = tuple((t, -100.0) for t in range(eng.n_vocab) if eng.is_eog(t))
    params = SamplingParams(temperature=0.0, max_tokens=400, logit_bias=no_end)
    first = asyncio.Event()
    jobs = [eng.submit(tokens, params) for _ in range(4)]
    tasks = [
        asyncio.create_task(consume(eng, j, started=first if i == 0 else None))
        for i, j in enumerate(jobs)
    ]
    await first.wait()
    assert eng.stats.active == 1 and eng.stats.queued == 3
    await eng.close()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, EngineClosed) for o in outcomes), outcomes
    with pytest.raises(EngineClosed):
        eng.submit(tokens, params)
    await asyncio.sleep(0.05)
    s = eng.stats
    assert s.active == 0 and s.queued == 0
    assert s.requests_failed == 4
    assert s.requests_completed + s.requests_cancelled + s.requests_failed == s.requests_total
    await eng.close()  # twice is fine
