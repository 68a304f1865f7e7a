"""What comes out of the engine becomes choices: one event stream for a request's `n` sequences.

`choice_events(engine, jobs, work)` merges the sequences' streams (in the order their pieces
arrive) into `ChoiceText`, `ChoiceCall` and `ChoiceEnd` events, each naming its choice's index.
When the work parses tool calls, each choice's text goes through its own `ToolCallParser`:
content comes out as `ChoiceText`, calls as `ChoiceCall` deltas (OpenAI's `delta.tool_calls`
pieces), and a choice that called a tool ends with `finish_reason` `"tool_calls"`.

Log-probabilities travel with the text they belong to: a piece's logprobs wait for the next text
event of their choice (the parser may hold text back, or turn it into a call) and what is left
goes with the choice's end. Token ids travel the same way (`ChoiceText.token_ids`,
`ChoiceCall.token_ids`: the ids of the pieces since the previous text or call event of the
choice, on the first event a piece's text produced), so the ids a stream delivered always cover
what it delivered (what a resumption on another node continues from).

A resumed stream (`resume`, one job) gets the resumed tokens' pieces back from the engine first
(`Piece.replayed`, with the text the first node released). They become events exactly as on
the first node (same pieces, so the same events: through the parser when the work parses tool
calls), and so does everything after: the first `resume.deltas` text and call events are the
ones the client already has and are not sent again, and a choice with calls before the
junction still ends with `"tool_calls"`. Counting events rather than tokens or text matters:
one piece can produce several events (a call's start and its first argument fragment), and a
stream can break between them; and an event can bring text but no token, or text the replay
does not give back: text a stop matcher held back, or an incomplete UTF-8 character, released
when the generation ends (in the chunk a stream can break after, before its finish). The
replay holds that text back too, and the end here releases it again: only the count says the
client has it. Without `deltas` (None: a relay from before it counted them) the replayed
pieces' events count as the delivered ones and every later one is sent, as older nodes did:
exact but for those cuts (text released at the end comes twice, an event after the cut but of
the same piece is lost). A call's id (random) is in its first event only: the client keeps the
ids it saw (the replay's own ids for those calls are never sent), and a call begun after the
junction gets one here.

Every format (chat and completion chunks, native chunks, Responses events) and the whole-answer
path (`collect`) read the same events, so a streamed answer and a whole one cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

from llamanet.node.engine import GenerationResult, Job, Piece, TokenLogprob
from llamanet.node.engine_api import Engine
from llamanet.node.logprobs import chat_logprobs
from llamanet.node.structured import InvalidOutput, validate_output
from llamanet.node.tool_parser import ContentDelta, ToolCallParser
from llamanet.node.work import Work
from llamanet.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatResponseMessage,
    ResumeFrom,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ChoiceCall",
    "ChoiceEnd",
    "ChoiceEvent",
    "ChoiceText",
    "chat_completion",
    "choice_events",
    "collect",
    "total_usage",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceText:
    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    token_ids: tuple[int, ...] = ()  # generated since the previous text event of the choice


@dataclass(frozen=True)
class ChoiceCall:
    index: int
    delta: ToolCallDelta
    token_ids: tuple[int, ...] = ()  # generated since the previous text or call event


@dataclass(frozen=True)
class ChoiceEnd:
    """A choice is complete: its finish reason, its whole content and calls, its result."""

    index: int
    finish_reason: str  # "stop" | "length" | "tool_calls"
    result: GenerationResult
    content: str
    calls: list[ToolCall]
    logprobs: tuple[TokenLogprob, ...] = ()  # not yet sent with a text event

    def message_content(self) -> str | None:
        """The message's content as OpenAI gives it: None when the answer is only calls."""
        return self.content if self.content.strip() or not self.calls else None


ChoiceEvent = ChoiceText | ChoiceCall | ChoiceEnd


@dataclass
class _State:
    parser: ToolCallParser | None
    pending: list[TokenLogprob] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    # a resumed stream: how many of its text and call events the client already has (None:
    # those of the replayed tokens)
    delivered: int | None = 0
    replayed: str = ""  # a resumed stream's text from the first node (the whole content's start)

    def take(self) -> tuple[TokenLogprob, ...]:
        out, self.pending = tuple(self.pending), []
        return out

    def _ids(self) -> tuple[int, ...]:
        ids, self.pending_ids = tuple(self.pending_ids), []
        return ids

    def text(self, index: int, text: str) -> ChoiceText:
        """A text event with the logprobs and token ids that waited for it."""
        return ChoiceText(index, text, self.take(), self._ids())

    def call(self, index: int, delta: ToolCallDelta) -> ChoiceCall:
        """A call event with the token ids that waited for it (logprobs wait for text)."""
        return ChoiceCall(index, delta, self._ids())

    def feed(self, text: str) -> list[ContentDelta | ToolCallDelta]:
        """What a piece's text becomes: the parser's events, or itself (when it says something)."""
        if self.parser is not None:
            return self.parser.feed(text)
        return [ContentDelta(text)] if text else []

    def sent(self, replayed: bool) -> bool:
        """Whether the next event of a resumed stream was delivered already (one more)."""
        if self.delivered is None:
            return replayed
        if self.delivered > 0:
            self.delivered -= 1
            return True
        return False


async def _closing(items: AsyncIterator[Piece | GenerationResult]) -> None:
    aclose = getattr(items, "aclose", None)  # an async generator: run its cleanup now
    if aclose is not None:
        await aclose()


async def _merged(
    engine: Engine, jobs: Sequence[Job]
) -> AsyncGenerator[tuple[int, Piece | GenerationResult], None]:
    """(choice index, item) from every job's stream as they come; closing it cancels them."""
    if len(jobs) == 1:
        items = engine.stream(jobs[0])
        try:
            async for item in items:
                yield 0, item
        finally:
            await _closing(items)
        return
    queue: asyncio.Queue[tuple[int, Piece | GenerationResult | Exception]] = asyncio.Queue()

    async def pump(index: int, job: Job) -> None:
        try:
            async for item in engine.stream(job):
                queue.put_nowait((index, item))
        except Exception as exc:  # the request fails as a whole
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        remaining = len(jobs)
        while remaining:
            index, got = await queue.get()
            if isinstance(got, Exception):
                raise got
            if isinstance(got, GenerationResult):
                remaining -= 1
            yield index, got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _check(work: Work, end: ChoiceEnd) -> None:
    """The last check of structured output: grammar-constrained text always validates unless
    it was cut; anything else is a defect worth a log line (the answer is sent as it is)."""
    if end.finish_reason != "stop" or not (work.json_object or work.schema):
        return
    try:
        validate_output(end.content, work.schema)
    except InvalidOutput as exc:
        log.warning("structured output of choice %d does not validate: %s", end.index, exc)


async def choice_events(
    engine: Engine, jobs: Sequence[Job], work: Work, resume: ResumeFrom | None = None
) -> AsyncGenerator[ChoiceEvent, None]:
    """The request's events (see the module docstring); raises what the engine raises.
    `resume`: the one job continues a stream another node began (see the module docstring)."""
    plan = work.tools
    states = [
        _State(ToolCallParser(plan.format, plan.names) if plan and plan.parses_calls else None)
        for _ in jobs
    ]
    if resume is not None:
        states[0].delivered = resume.deltas

    def parsed(
        index: int, events: list[ContentDelta | ToolCallDelta], replayed: bool = False
    ) -> list[ChoiceEvent]:
        state = states[index]
        out: list[ChoiceEvent] = []
        for event in events:
            if isinstance(event, ContentDelta):
                choice: ChoiceEvent = state.text(index, event.text)
            else:
                choice = state.call(index, event)
            if not state.sent(replayed):
                out.append(choice)
        return out

    async with contextlib.aclosing(_merged(engine, jobs)) as items:
        async for index, item in items:
            state = states[index]
            if isinstance(item, Piece):
                if item.replayed:  # delivered by the node the stream began on
                    state.replayed += item.text
                else:
                    state.pending.extend(item.logprobs)
                    state.pending_ids.extend(item.token_ids)
                for event in parsed(index, state.feed(item.text), item.replayed):
                    yield event
                continue
            parser = state.parser
            if parser is not None:
                for event in parsed(index, parser.finish()):
                    yield event
            calls = parser.calls if parser is not None else []
            finish = item.finish_reason
            if calls and finish == "stop":
                finish = "tool_calls"
            content = parser.content if parser is not None else state.replayed + item.text
            end = ChoiceEnd(index, finish, item, content, list(calls), state.take())
            _check(work, end)
            yield end


async def collect(events: AsyncGenerator[ChoiceEvent, None]) -> list[ChoiceEnd]:
    """Every choice's end, in index order (the whole-answer path)."""
    async with contextlib.aclosing(events):
        ends = [event async for event in events if isinstance(event, ChoiceEnd)]
    return sorted(ends, key=lambda end: end.index)


def chat_completion(model: str, ends: Sequence[ChoiceEnd], *, logprobs: bool) -> ChatCompletion:
    """The `chat.completion` object of a request's whole answers."""
    return ChatCompletion(
        model=model,
        usage=total_usage([end.result for end in ends]),
        choices=[
            ChatChoice(
                index=end.index,
                message=ChatResponseMessage(
                    content=end.message_content(), tool_calls=end.calls or None
                ),
                finish_reason=end.finish_reason,  # type: ignore[arg-type]
                logprobs=chat_logprobs(end.result.logprobs) if logprobs else None,
            )
            for end in ends
        ],
    )


def total_usage(results: Sequence[GenerationResult]) -> Usage:
    """Usage of a request's choices: the prompt counted once, every choice's tokens."""
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(result.completion_tokens for result in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
