"""`RecordCache`: the node records a client knows, each verified once and dropped when it ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llamanet.protocol import NodeRecord
from llamanet.swarm.records import CLOCK_SKEW, InvalidRecord, newest_per_node, verify_record

__all__ = ["RecordCache"]

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    record: NodeRecord
    deadline: float  # local monotonic time the record expires


class RecordCache:
    """The live records this client knows, newest per node, each dropped when its ttl runs out.

    A record's `ttl` is the life it had left when issued, so it lives at most `ttl` from the
    moment this client first saw it (seeing the same `seq` again does not extend it), and never
    past `issued_at + ttl` on the wall clock, give or take the allowed clock skew. Every new
    record's signature is verified (`records.verify_record`) before it is used, wherever it
    came from: a node can vouch only for records their owners signed.
    """

    def __init__(
        self,
        *,
        verify: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._verify = verify
        self._clock = clock
        self._wall_clock = wall_clock
        self.rejected = 0

    def merge(self, records: Sequence[NodeRecord]) -> None:
        now, wall = self._clock(), self._wall_clock()
        for record in self._valid_newest(records, wall):
            held = self._entries.get(record.node_id)
            if held is not None and record.seq <= held.record.seq:
                continue
            wall_left = record.issued_at + record.ttl + CLOCK_SKEW - wall
            deadline = now + min(record.ttl, wall_left)
            if deadline > now:
                self._entries[record.node_id] = _Entry(record, deadline)

    def _valid_newest(self, records: Sequence[NodeRecord], wall: float) -> list[NodeRecord]:
        """The valid records of `records`, newest per node (a forged record with a high seq
        must not hide its node's genuine one)."""
        return list(newest_per_node(r for r in records if self._valid(r, wall)).values())

    def _valid(self, record: NodeRecord, wall: float) -> bool:
        if not self._verify:
            return True
        held = self._entries.get(record.node_id)
        if held is not None and record.seq <= held.record.seq:
            return False  # not newer: no need to spend a signature check on it
        try:
            verify_record(record, now=wall)
        except InvalidRecord as exc:
            self.rejected += 1
            log.debug("dropped a record of %s: %s", record.node_id[:12], exc)
            return False
        return True

    def live(self) -> list[NodeRecord]:
        """Unexpired records, withdrawn ones (tombstones) included."""
        now = self._clock()
        for node_id in [n for n, e in self._entries.items() if e.deadline <= now]:
            del self._entries[node_id]
        return [e.record for e in self._entries.values()]

    def active(self) -> list[NodeRecord]:
        """Unexpired records of nodes that have not withdrawn, by node id."""
        return sorted((r for r in self.live() if not r.withdrawn), key=lambda r: r.node_id)
