"""The failover policy: what one request does when the node it was sent to fails.

One policy for both doors into the swarm, `LlamaNetClient` and a node's gateway, so the same
failure is handled the same way wherever the request came in:

- **Busy** (`503` with `Retry-After`: queue full, model loading, shutting down; `429`: a rate or
  concurrency limit): the node works but cannot take *this* request now. Skip it for this
  request; no cooldown (it may have room a moment later for the next one).
- **Stale record** (`404 model_not_found` from a node whose record said it serves the model):
  skip it; no cooldown, its next record will say what it serves.
- **Broken** (connection refused or reset, a timeout, no response head within the first-byte
  deadline and no answer to a liveness probe either, any other `5xx`, an answer that does not
  parse, an error event before the first token): try another node and cool this one down,
  doubling on each consecutive failure; a record with a newer `started_at` (the node
  restarted) ends the cooldown.
- **The caller's error** (any other `4xx`, an error event of a caller error type): every node
  would answer the same; it reaches the caller at once.

Before the first token, failover is a plain retry on the next node. After it, a stream that
breaks, ends early or stalls (nothing, keep-alives included, for `stall_timeout` seconds) is
*resumed*: `Failover.resume_on_same_model` narrows the remaining candidates to nodes whose
record shows the same model fingerprint and runtime, and the caller sends the next one the
original request plus the token ids delivered so far (`llamanet.swarm.resume`); the verdicts
stay the same. Only when no such node can take over does the caller surface the interruption
(an error event through the gateway, `StreamInterrupted` in the client).

Ranking uses the same high prompt-size estimate on both paths (`estimate_prompt_tokens`), and
both list the swarm's models with `swarm_models`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from pydantic import ValidationError

from llamanet.protocol import ChatMessage, ModelCard, NodeRecord
from llamanet.swarm.selector import NodeSelector, offers

__all__ = [
    "CALLER_ERROR_TYPES",
    "DEFAULT_FIRST_BYTE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_STALL_TIMEOUT",
    "RESUME_ATTEMPTS",
    "Attempt",
    "Failover",
    "Verdict",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
    "judge_status",
    "judge_stream_error",
    "model_identity",
    "swarm_models",
    "wait_for_answer",
]

log = logging.getLogger(__name__)

F = TypeVar("F")
T = TypeVar("T")

DEFAULT_FIRST_BYTE_TIMEOUT: Final = 5.0
# a node sends a keep-alive comment after this much silence in a stream; a stream silent for
# the stall timeout (well above both that and the longest inter-token gap under load) is dead
DEFAULT_KEEPALIVE_INTERVAL: Final = 2.0
DEFAULT_STALL_TIMEOUT: Final = 10.0
RESUME_ATTEMPTS: Final = 3  # nodes a broken stream may be resumed on, after those tried before
# error types that are the caller's fault wherever the request goes
CALLER_ERROR_TYPES: Final = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "not_found_error"}
)


class Verdict(enum.Enum):
    """What a failed attempt means for the request and for the node."""

    SKIP = "skip"  # busy or stale: another node for this request, no cooldown
    COOL_DOWN = "cool_down"  # broken: another node, and this one cools down
    RAISE = "raise"  # the caller's error: no other node would do better

    @property
    def retry_elsewhere(self) -> bool:
        return self is not Verdict.RAISE


def judge_status(
    status: int,
    *,
    error_type: str | None = None,
    error_code: str | None = None,
    retry_after: float | None = None,
) -> Verdict:
    """The verdict on an HTTP error answer (status >= 400) received before the first token."""
    if status == 429 or (status == 503 and retry_after is not None):
        return Verdict.SKIP
    if error_code in ("model_not_found", "fingerprint_mismatch"):
        return Verdict.SKIP  # chosen because its record said it serves the model: stale
    if status >= 500:
        return Verdict.COOL_DOWN
    return Verdict.RAISE


def judge_stream_error(error_type: str | None, error_code: str | None = None) -> Verdict:
    """The verdict on an error event that arrived before the first token."""
    if error_code == "model_not_found":
        return Verdict.SKIP
    if error_type in CALLER_ERROR_TYPES:
        return Verdict.RAISE
    if error_code in ("queue_full", "rate_limit_exceeded", "concurrency_limit_exceeded"):
        return Verdict.SKIP
    return Verdict.COOL_DOWN


# --------------------------------------------------------------------------- prompt size


def _text_tokens(text: str) -> int:
    # ~4 bytes per token for English with common tokenizers; 3 keeps the estimate on the high side
    return -(-len(text.encode("utf-8")) // 3)


def estimate_prompt_tokens(
    prompt: str | Sequence[str] | None = None, messages: Sequence[ChatMessage] | None = None
) -> int:
    """A deliberately high estimate of a prompt's tokens, for ranking only (a node enforces the
    exact limit with its own tokenizer). A node whose context the estimate overflows is passed
    over while one that fits exists; if none does, the estimate is dropped (`Failover`)."""
    if messages is not None:
        return 8 + sum(_text_tokens(m.text()) + 8 for m in messages)
    if prompt is not None and not isinstance(prompt, str):
        prompt = "".join(prompt)
    return 2 + _text_tokens(prompt or "")


def estimate_request_tokens(body: Mapping[str, Any]) -> int:
    """`estimate_prompt_tokens` of a request body of any generation endpoint (OpenAI chat and
    completions, native): `messages` or `prompt`. 0 when neither can be read."""
    messages = body.get("messages")
    if isinstance(messages, list):
        with contextlib.suppress(ValidationError, TypeError):
            return estimate_prompt_tokens(
                messages=[ChatMessage.model_validate(m) for m in messages]
            )
        return 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return estimate_prompt_tokens(prompt)
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return estimate_prompt_tokens(prompt)
    return 0


# --------------------------------------------------------------------------- the model list


def swarm_models(records: Iterable[NodeRecord]) -> list[ModelCard]:
    """The models of the live nodes among `records`, each once, by id, with the number of nodes
    serving it and the largest `n_ctx` among them: the router sends a request only to a node
    whose context fits it, so the largest is what the swarm can take."""
    cards: dict[str, ModelCard] = {}
    for record in records:
        if record.withdrawn:
            continue
        for info in record.models:
            card = cards.get(info.id)
            if card is None:
                cards[info.id] = ModelCard(id=info.id, nodes=1, n_ctx=info.n_ctx)
            else:
                card.nodes += 1
                card.n_ctx = max(card.n_ctx or 0, info.n_ctx)
    return [cards[k] for k in sorted(cards)]


# --------------------------------------------------------------------------- one request


@dataclass
class Attempt(Generic[F]):
    """One node tried, what went wrong (the caller's own error object) and the verdict."""

    node_id: str
    verdict: Verdict
    failure: F
    retry_after: float | None = None


@dataclass
class Failover(Generic[F]):
    """The successive nodes one request tries, and what went wrong with each.

    `records()` gives the records to choose from (read afresh for every attempt); `refresh()`,
    awaited at most once per request when no candidate is left, may find more. At most
    `attempts` nodes are tried. `F` is the caller's failure type (the client's exceptions, the
    gateway's error answers); the policy only looks at the verdict.
    """

    selector: NodeSelector
    records: Callable[[], Iterable[NodeRecord]]
    refresh: Callable[[], Awaitable[object]] | None = None
    model: str | None = None
    prompt_tokens: int = 0
    max_tokens: int = 0
    attempts: int = 3
    exclude: Collection[str] = ()
    capability: str | None = None  # only nodes advertising it ("embeddings", ...)
    tried: list[NodeRecord] = field(default_factory=list)
    failures: list[Attempt[F]] = field(default_factory=list)
    refreshed: bool = False
    # set by `resume_on_same_model`: only nodes with this (fingerprint, runtime) from then on
    identity: tuple[str, str | None] | None = None

    @property
    def tried_ids(self) -> set[str]:
        return {r.node_id for r in self.tried}

    async def next_node(self) -> NodeRecord | None:
        """The best node not tried yet, or None when the request has run out of nodes."""
        if len(self.tried) >= self.attempts:
            return None
        node = self._pick()
        if node is None and self.refresh is not None and not self.refreshed:
            self.refreshed = True  # nothing left: one discovery round might find more
            try:
                await self.refresh()
            except Exception as exc:  # discovery is best effort
                log.debug("refresh during failover failed: %r", exc)
            node = self._pick()
        if node is not None:
            self.tried.append(node)
        return node

    def _pick(self) -> NodeRecord | None:
        records = list(self.records())
        if self.identity is not None:
            records = [r for r in records if model_identity(r, self.model) == self.identity]
        exclude = {*self.exclude, *self.tried_ids}
        select = self.selector.select
        node = select(
            records,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.max_tokens,
            exclude=exclude,
            capability=self.capability,
        )
        if node is None and self.prompt_tokens:
            # the estimate is deliberately high: let a node that may fit decide exactly
            node = select(
                records,
                model=self.model,
                max_tokens=self.max_tokens,
                exclude=exclude,
                capability=self.capability,
            )
        return node

    def failed(
        self, node: NodeRecord, verdict: Verdict, failure: F, *, retry_after: float | None = None
    ) -> float:
        """Record a failed attempt; returns the cooldown it earned the node (0 for none)."""
        self.failures.append(Attempt(node.node_id, verdict, failure, retry_after))
        if verdict is not Verdict.COOL_DOWN:
            return 0.0
        return self.selector.mark_failed(
            node.node_id, retry_after=retry_after, started_at=node.started_at
        )

    def succeeded(self, node: NodeRecord) -> None:
        self.selector.mark_ok(node.node_id)

    @property
    def all_busy(self) -> bool:
        """Every node tried was merely busy: the request may well succeed a moment later."""
        return bool(self.failures) and all(a.verdict is Verdict.SKIP for a in self.failures)

    def retry_after(self, default: float = 1.0) -> float:
        """How long the caller should wait before trying again: the shortest wait a busy node
        asked for, else `default`."""
        asked = [a.retry_after for a in self.failures if a.retry_after is not None]
        return min(asked) if asked else default

    def candidates(self) -> list[NodeRecord]:
        """Live records that serve the request's model (any model if None), cooling or not;
        nodes that hold no model (gateways) are not counted."""
        records = self.records()
        return [
            r
            for r in records
            if not r.withdrawn
            and r.models
            and r.serves(self.model)
            and offers(r, self.model, self.capability)
            and r.node_id not in self.exclude
        ]

    def cooling(self) -> list[NodeRecord]:
        return [r for r in self.candidates() if self.selector.in_cooldown(r.node_id)]

    def resume_on_same_model(self, node: NodeRecord, attempts: int = RESUME_ATTEMPTS) -> bool:
        """Turn this request into the resumption of a stream `node` was serving: from now on
        only nodes with the same model fingerprint and runtime are candidates (the tried ones
        excluded), up to `attempts` more of them. False when `node`'s record has no
        fingerprint: the stream cannot be resumed anywhere."""
        identity = model_identity(node, self.model)
        if identity is None:
            return False
        if self.identity is None:
            self.identity = identity
            self.model = _served_model(node, self.model)
            self.attempts = len(self.tried) + attempts
        return True


def _served_model(record: NodeRecord, model: str | None) -> str | None:
    for info in record.models:
        if model is None or info.id == model:
            return info.id
    return model


def model_identity(record: NodeRecord, model: str | None) -> tuple[str, str | None] | None:
    """(fingerprint, runtime) of the model `record` serves for `model` (None: its first one);
    None when it publishes no fingerprint."""
    for info in record.models:
        if model is None or info.id == model:
            return (info.fingerprint, info.runtime) if info.fingerprint else None
    return None


# --------------------------------------------------------------------------- first byte


async def wait_for_answer(
    answer: Awaitable[T],
    *,
    first_byte_timeout: float,
    alive: Callable[[], Awaitable[bool]],
) -> T:
    """Await a node's answer (its response head), telling a frozen node from a busy one.

    A node starts a streamed answer as soon as it admits the request, but a non-streamed one
    only when it is complete; so silence past `first_byte_timeout` proves nothing by itself.
    Then `alive()` (a `/health` probe bounded by the same deadline) asks the node directly: a
    live node answers it at once however busy it is, and the wait goes on; a node that does not
    (frozen, hung, unreachable) fails the attempt with `TimeoutError`. `answer` is cancelled
    whenever this does not return its result.
    """
    task = asyncio.create_task(_result_of(answer))
    probe: asyncio.Task[bool] | None = None
    try:
        done, _ = await asyncio.wait({task}, timeout=first_byte_timeout)
        if task in done:
            return task.result()
        probe = asyncio.create_task(_answers(alive, first_byte_timeout))
        either: set[asyncio.Task[Any]] = {task, probe}
        done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if task in done or task.done():
            return task.result()
        if not probe.result():
            raise TimeoutError(
                f"no answer within {first_byte_timeout:g} s, nor to a liveness probe"
            )
        return await task
    finally:
        for pending in (task, probe):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending


async def _result_of(answer: Awaitable[T]) -> T:
    return await answer


async def _answers(alive: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    try:
        return await asyncio.wait_for(alive(), timeout)
    except Exception:  # any failure to answer is no answer
        return False
