"""Node selection: records + local in-flight counts + cooldowns -> the node to use.

Pure logic, no I/O. The one router of LlamaNet: the client library and the node's forwarding
both use `NodeSelector`. Its state is local to the process that owns it (requests this process
has in flight to each node, measured round-trip times, failure cooldowns); everything else comes
from the `NodeRecord`s passed to `rank()`.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from llamanet.protocol import NodeRecord
from llamanet.swarm.records import newest_per_node

__all__ = ["NodeSelector", "offers"]

_T = TypeVar("_T")

RTT_EMA_ALPHA = 0.3  # weight of a new round-trip sample in the moving average


class NodeSelector:
    """Ranks nodes for a request and remembers what this process learned about them.

    Strategies:
    - ``load_balanced`` (default): lowest expected wait, i.e.
      ``(queued + active + local in-flight) / max(tokens_per_second, tps_floor) + rtt`` for a
      node that generates one request at a time; for a batching node (``slots`` > 1) only the
      requests beyond its slots wait, so ``ahead`` becomes
      ``max(0, ahead - slots + 1) + ahead / slots``: a free slot starts a request at once.
      A node that has not measured its speed yet (tokens_per_second 0) is given the median speed
      of the measured candidates, so a newcomer is not starved of the traffic it needs to measure.
      Unknown rtt counts as 0.
    - ``round_robin``: eligible nodes in a fixed order (by node id), rotating one step per call.
    - ``random``: uniformly shuffled.
    - ``fastest``: highest published tokens/s first.
    - ``latency``: lowest measured rtt first; nodes never measured come after measured ones.

    Scores within ``tie_tolerance`` of each other are ties, broken at random: identical nodes
    share traffic instead of the first listed taking it all.
    """

    STRATEGIES = ("load_balanced", "round_robin", "random", "fastest", "latency")

    def __init__(
        self,
        strategy: str = "load_balanced",
        *,
        min_tps: float | None = None,
        max_load: float | None = None,
        tps_floor: float = 1.0,
        cooldown_base: float = 2.0,
        cooldown_max: float = 60.0,
        tie_tolerance: float = 1e-3,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if strategy not in self.STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {self.STRATEGIES}")
        if tps_floor <= 0:
            raise ValueError("tps_floor must be positive")
        if cooldown_base <= 0 or cooldown_max < cooldown_base:
            raise ValueError("need 0 < cooldown_base <= cooldown_max")
        self.strategy = strategy
        self.min_tps = min_tps
        self.max_load = max_load
        self.tps_floor = tps_floor
        self.cooldown_base = cooldown_base
        self.cooldown_max = cooldown_max
        self.tie_tolerance = tie_tolerance
        self._rng = rng or random.Random()
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._rtt: dict[str, float] = {}
        self._fail_streak: dict[str, int] = {}
        self._cooldown_until: dict[str, float] = {}
        self._failed_start: dict[str, float] = {}  # node id -> started_at of what failed
        self._rr_counter = 0

    # ------------------------------------------------------------------ ranking

    def rank(
        self,
        records: Iterable[NodeRecord],
        *,
        model: str | None = None,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        exclude: Collection[str] = (),
        capability: str | None = None,
    ) -> list[NodeRecord]:
        """Eligible nodes for a request, best first (an empty list if none qualifies).

        `capability` (e.g. "embeddings"): only nodes whose record advertises it for the model.
        """
        needed = prompt_tokens + max_tokens
        unique = _unique(records)
        for record in unique:
            self._note_restart(record)
        candidates = [
            r
            for r in unique
            if self._eligible(r, model, needed, exclude) and offers(r, model, capability)
        ]
        if not candidates:
            return []
        return self._order(candidates)

    def select(
        self,
        records: Iterable[NodeRecord],
        *,
        model: str | None = None,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        exclude: Collection[str] = (),
        capability: str | None = None,
    ) -> NodeRecord | None:
        """The best eligible node, or None."""
        ranked = self.rank(
            records,
            model=model,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            exclude=exclude,
            capability=capability,
        )
        return ranked[0] if ranked else None

    def _eligible(
        self, record: NodeRecord, model: str | None, needed: int, exclude: Collection[str]
    ) -> bool:
        if record.withdrawn or record.node_id in exclude or not record.models:
            return False
        if not record.serves(model) or self.in_cooldown(record.node_id):
            return False
        if self.min_tps is not None and record.tokens_per_second < self.min_tps:
            return False
        if self.max_load is not None and record.load > self.max_load:
            return False
        n_ctx = record.n_ctx_for(model)
        return n_ctx is None or needed <= n_ctx

    def _order(self, candidates: list[NodeRecord]) -> list[NodeRecord]:
        if self.strategy == "load_balanced":
            default_tps = self._default_tps(candidates)
            return self._sorted_with_ties(
                candidates, lambda r: self.expected_wait(r, default_tps), self.tie_tolerance
            )
        if self.strategy == "fastest":
            return self._sorted_with_ties(candidates, lambda r: -r.tokens_per_second, 1e-9)
        if self.strategy == "latency":
            return self._by_latency(candidates)
        if self.strategy == "round_robin":
            return self._round_robin(candidates)
        shuffled = list(candidates)
        self._rng.shuffle(shuffled)
        return shuffled

    def expected_wait(self, record: NodeRecord, default_tps: float | None = None) -> float:
        """The ``load_balanced`` score of a node: lower is better."""
        tps = record.tokens_per_second
        if tps <= 0 and default_tps is not None:
            tps = default_tps
        ahead = record.queued + record.active + self.in_flight(record.node_id)
        rtt = self._rtt.get(record.node_id, 0.0)
        if record.slots <= 1:  # one request at a time: everything ahead runs first
            return ahead / max(tps, self.tps_floor) + rtt
        # a batching node starts a request at once while a slot is free; only the requests
        # beyond its slots wait, and the ones sharing its batch slow it down a little
        waiting = max(0, ahead - record.slots + 1)
        return (waiting + ahead / record.slots) / max(tps, self.tps_floor) + rtt

    @staticmethod
    def _default_tps(candidates: list[NodeRecord]) -> float | None:
        measured = [r.tokens_per_second for r in candidates if r.tokens_per_second > 0]
        return statistics.median(measured) if measured else None

    def _by_latency(self, candidates: list[NodeRecord]) -> list[NodeRecord]:
        known = [r for r in candidates if r.node_id in self._rtt]
        unknown = [r for r in candidates if r.node_id not in self._rtt]
        self._rng.shuffle(unknown)
        ordered = self._sorted_with_ties(known, lambda r: self._rtt[r.node_id], self.tie_tolerance)
        return ordered + unknown

    def _round_robin(self, candidates: list[NodeRecord]) -> list[NodeRecord]:
        ordered = sorted(candidates, key=lambda r: r.node_id)
        start = self._rr_counter % len(ordered)
        self._rr_counter += 1
        return ordered[start:] + ordered[:start]

    def _sorted_with_ties(
        self, items: list[_T], key: Callable[[_T], float], tolerance: float
    ) -> list[_T]:
        """Sort by `key`; runs of items within `tolerance` of the run's best are shuffled."""
        keyed = sorted(((key(item), item) for item in items), key=lambda pair: pair[0])
        result: list[_T] = []
        group: list[_T] = []
        group_key = 0.0
        for value, item in keyed:
            if group and value - group_key > tolerance:
                self._rng.shuffle(group)
                result.extend(group)
                group = []
            if not group:
                group_key = value
            group.append(item)
        self._rng.shuffle(group)
        result.extend(group)
        return result

    # ------------------------------------------------------------------ in-flight requests

    @contextmanager
    def track(self, node_id: str) -> Iterator[None]:
        """Count one request in flight to `node_id` for the duration of the block."""
        self._in_flight[node_id] = self._in_flight.get(node_id, 0) + 1
        try:
            yield
        finally:
            remaining = self._in_flight[node_id] - 1
            if remaining:
                self._in_flight[node_id] = remaining
            else:
                del self._in_flight[node_id]

    def in_flight(self, node_id: str) -> int:
        return self._in_flight.get(node_id, 0)

    # ------------------------------------------------------------------ failures

    def mark_failed(
        self, node_id: str, *, retry_after: float | None = None, started_at: float | None = None
    ) -> float:
        """Put a node in cooldown; returns its length in seconds.

        The cooldown doubles with each consecutive failure (from `cooldown_base` up to
        `cooldown_max`); a `retry_after` the node asked for lengthens it, within the same cap.
        `started_at` is that of the record the failure was seen with: a record of a later
        incarnation (the node restarted) ends the cooldown and the streak (`rank()` checks).
        """
        streak = self._fail_streak.get(node_id, 0) + 1
        self._fail_streak[node_id] = streak
        seconds = min(self.cooldown_base * 2.0 ** min(streak - 1, 62), self.cooldown_max)
        if retry_after is not None and retry_after > seconds:
            seconds = min(retry_after, self.cooldown_max)
        self._cooldown_until[node_id] = self._clock() + seconds
        if started_at is not None:
            self._failed_start[node_id] = max(started_at, self._failed_start.get(node_id, 0.0))
        return seconds

    def mark_ok(self, node_id: str) -> None:
        """A request succeeded: forget the failure streak and any cooldown."""
        self._fail_streak.pop(node_id, None)
        self._cooldown_until.pop(node_id, None)
        self._failed_start.pop(node_id, None)

    def _note_restart(self, record: NodeRecord) -> None:
        """A record from a later incarnation than the one that failed: the past is forgotten
        (a restarted node must not pay for its predecessor's failures)."""
        failed = self._failed_start.get(record.node_id)
        if failed is not None and record.started_at > failed:
            self.mark_ok(record.node_id)

    def in_cooldown(self, node_id: str) -> bool:
        return self.cooldown_remaining(node_id) > 0

    def cooldown_remaining(self, node_id: str) -> float:
        """Seconds until the node may be chosen again (0 when it is not in cooldown)."""
        until = self._cooldown_until.get(node_id)
        if until is None:
            return 0.0
        remaining = until - self._clock()
        if remaining <= 0:
            del self._cooldown_until[node_id]  # the streak stays until mark_ok
            return 0.0
        return remaining

    # ------------------------------------------------------------------ round-trip times

    def record_rtt(self, node_id: str, seconds: float) -> None:
        """Fold one round-trip measurement into the node's moving average."""
        if seconds < 0:
            return
        previous = self._rtt.get(node_id)
        if previous is None:
            self._rtt[node_id] = seconds
        else:
            self._rtt[node_id] = previous + RTT_EMA_ALPHA * (seconds - previous)

    def rtt(self, node_id: str) -> float | None:
        """The smoothed round-trip time to a node, None if never measured."""
        return self._rtt.get(node_id)


def offers(record: NodeRecord, model: str | None, capability: str | None) -> bool:
    """Whether the record advertises `capability` for `model` (any of its models for None)."""
    if capability is None:
        return True
    return any(
        capability in info.capabilities for info in record.models if model in (None, info.id)
    )


def _unique(records: Iterable[NodeRecord]) -> list[NodeRecord]:
    """One record per node id: the one with the highest seq."""
    return list(newest_per_node(records).values())
