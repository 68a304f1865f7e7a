"""Multi-writer soft-state storage: each key holds many nodes' records, one entry per node id.

Stores merge: the newest `seq` per node wins; each entry expires on its own (a deadline on this
machine's monotonic clock, set from the *remaining* ttl a peer sent); tombstones
(`withdrawn=True`) are kept until their ttl so they keep overriding older copies, but are never
returned as live records. Nothing is republished: a record lives only as long as its writer keeps
refreshing it. Limits per key, per sending peer, on the number of keys and on the number of
entries bound what one flooder can make a node hold. (docs/dht.md, defects 1 and 3.)
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kademlia.storage import IStorage

from llamanet.protocol import NodeRecord
from llamanet.swarm.dht.keys import digests_for
from llamanet.swarm.dht.validation import RecordValidator, read_ttl
from llamanet.swarm.records import CLOCK_SKEW, InvalidRecord

log = logging.getLogger(__name__)

WireEntry = list[Any]  # [wire bytes, remaining ttl seconds]: what peers exchange


@dataclass(slots=True)
class Entry:
    record: NodeRecord
    wire: bytes
    expires: float  # deadline on time.monotonic()
    source: str | None  # "host:port" that delivered it, for the per-peer limit
    prefix: bytes  # first 8 bytes of the node id, as used in a lookup's "have" set


class RecordStorage(IStorage):
    """`IStorage` whose values are lists of `[wire record, remaining ttl]` entries, merged."""

    def __init__(
        self,
        validator: RecordValidator | None = None,
        *,
        max_per_key: int = 1024,
        max_per_source: int = 512,
        max_keys: int = 8192,
        max_entries: int = 20_000,
    ) -> None:
        self.validator = validator or RecordValidator()
        self.max_per_key = max_per_key
        self.max_per_source = max_per_source
        self.max_keys = max_keys
        self.max_entries = max_entries
        self._count = 0
        self.data: dict[bytes, dict[str, Entry]] = {}
        self._next_expiry: dict[bytes, float] = {}
        self._per_source: Counter[str] = Counter()
        # node id -> (highest seq seen, monotonic time until which it is remembered): a record
        # dropped from storage (expired, tombstoned) must not come back through a replay while its
        # signature could still pass (its ttl plus the allowed clock skew)
        self._last_seq: dict[str, tuple[int, float]] = {}
        self._on_withdrawn: list[Callable[[NodeRecord], None]] = []

    @property
    def rejected(self) -> Counter[str]:
        return self.validator.rejected

    def on_withdrawn(self, callback: Callable[[NodeRecord], None]) -> None:
        """Call `callback(tombstone)` whenever a newer tombstone is stored: the node it names
        left, and whoever caches its records should drop them now."""
        self._on_withdrawn.append(callback)

    # ------------------------------------------------------------------ writes

    def put(self, key: bytes, wire: object, remaining: object, source: str | None = None) -> bool:
        """Validate and merge one record under `key`; False (and counted) when refused."""
        validator = self.validator
        try:
            ttl = read_ttl(remaining)
        except InvalidRecord as exc:
            validator.rejected[exc.reason] += 1
            return False
        try:
            record = validator.decode(wire)
        except InvalidRecord:
            return False
        assert isinstance(wire, bytes)  # decode() checked it
        now = time.monotonic()
        entries = self.data.get(key)
        current = entries.get(record.node_id) if entries else None
        if current is not None and current.expires <= now:
            self._drop(key, record.node_id)
            entries, current = self.data.get(key), None
        if current is not None:
            if record.seq < current.record.seq or (
                record.seq == current.record.seq and wire != current.wire
            ):
                validator.reject("stale_seq")
                return False
            if record.seq == current.record.seq:  # the same signed record again: refresh its life
                if ttl > 0:
                    current.expires = max(current.expires, now + min(ttl, record.ttl))
                return True
        elif key not in digests_for(record):
            validator.reject("wrong_key")
            return False
        elif self._replayed(record, now):
            validator.reject("stale_seq")
            return False
        if current is None and not self._has_room(key, source, now):
            validator.reject("over_limit")  # before the signature check: floods stay cheap
            return False
        try:
            validator.verify(wire, ttl, record)
        except InvalidRecord:
            return False
        expires = now + min(ttl, record.ttl)
        if current is not None:
            self._drop(key, record.node_id)
            entries = self.data.get(key)
        if entries is None:
            entries = self.data[key] = {}
        entries[record.node_id] = Entry(
            record, wire, expires, source, bytes.fromhex(record.node_id[:16])
        )
        self._count += 1
        if source is not None:
            self._per_source[source] += 1
        self._next_expiry[key] = min(self._next_expiry.get(key, math.inf), expires)
        if record.withdrawn:
            self._announce_withdrawal(record)
        return True

    def _announce_withdrawal(self, tombstone: NodeRecord) -> None:
        for callback in self._on_withdrawn:
            try:
                callback(tombstone)
            except Exception:  # a listener's bug must not make storage refuse records
                log.exception("a withdrawal listener failed")

    def merge(self, key: bytes, entries: Iterable[object], source: str | None = None) -> int:
        """Store a batch of `[wire, remaining ttl]` entries; returns how many were accepted."""
        accepted = 0
        for item in entries:
            if not isinstance(item, list | tuple) or len(item) != 2:
                self.validator.reject("malformed", "entry is not [record, ttl]")
                continue
            accepted += self.put(key, item[0], item[1], source)
        return accepted

    def _has_room(self, key: bytes, source: str | None, now: float) -> bool:
        entries = self.data.get(key)
        if entries is None and len(self.data) >= self.max_keys:
            self.cull()
            if len(self.data) >= self.max_keys:
                return False
        if self._count >= self.max_entries:
            self.cull()
            if self._count >= self.max_entries:
                return False
        if entries is not None and len(entries) >= self.max_per_key:
            self._cull_key(key, now, force=True)
            if len(self.data.get(key, ())) >= self.max_per_key:
                return False
        return source is None or self._per_source[source] < self.max_per_source

    def _replayed(self, record: NodeRecord, now: float) -> bool:
        seen = self._last_seq.get(record.node_id)
        return seen is not None and seen[1] > now and record.seq <= seen[0]

    def _remember(self, record: NodeRecord, now: float) -> None:
        seen = self._last_seq.get(record.node_id)
        until = now + record.ttl + CLOCK_SKEW
        if seen is None or record.seq >= seen[0]:
            self._last_seq[record.node_id] = (record.seq, until)
        if len(self._last_seq) > self.max_entries:  # bounded: forget what no longer matters
            self._last_seq = {n: s for n, s in self._last_seq.items() if s[1] > now}

    def _drop(self, key: bytes, node_id: str) -> None:
        entries = self.data.get(key)
        if not entries:
            return
        entry = entries.pop(node_id, None)
        if entry is not None:
            self._count -= 1
            self._remember(entry.record, time.monotonic())
        if entry is not None and entry.source is not None:
            self._per_source[entry.source] -= 1
            if self._per_source[entry.source] <= 0:
                del self._per_source[entry.source]
        if not entries:
            del self.data[key]
            self._next_expiry.pop(key, None)

    # ------------------------------------------------------------------ expiry

    def _cull_key(self, key: bytes, now: float, force: bool = False) -> None:
        if not force and now < self._next_expiry.get(key, math.inf):
            return
        entries = self.data.get(key)
        if entries is None:
            self._next_expiry.pop(key, None)
            return
        for node_id in [nid for nid, entry in entries.items() if entry.expires <= now]:
            self._drop(key, node_id)
        remaining = self.data.get(key)
        if remaining:
            self._next_expiry[key] = min(entry.expires for entry in remaining.values())

    def cull(self) -> None:
        """Drop every expired entry (cheap: keys with nothing due are skipped)."""
        now = time.monotonic()
        for key in [k for k, due in self._next_expiry.items() if due <= now]:
            self._cull_key(key, now)

    # ------------------------------------------------------------------ reads

    def entries(
        self, key: bytes, have: dict[bytes, int] | None = None, budget: int | None = None
    ) -> tuple[list[WireEntry], bool]:
        """Wire entries under `key` (tombstones included: they must keep overriding older copies
        held elsewhere), minus those the asker already has at an equal or newer seq, up to
        `budget` bytes; the flag says whether some were left out for lack of room."""
        now = time.monotonic()
        self._cull_key(key, now)
        out: list[WireEntry] = []
        used = 0
        for entry in self.data.get(key, {}).values():
            if have:
                seq = have.get(entry.prefix)
                if seq is not None and seq >= entry.record.seq:
                    continue
            if budget is not None and used + len(entry.wire) > budget:
                return out, True
            used += len(entry.wire) + 12
            out.append([entry.wire, round(entry.expires - now, 3)])
        return out, False

    def records(self, key: bytes, *, include_withdrawn: bool = False) -> list[NodeRecord]:
        """Live records under `key`; tombstones only if asked for."""
        now = time.monotonic()
        self._cull_key(key, now)
        return [
            entry.record
            for entry in self.data.get(key, {}).values()
            if include_withdrawn or not entry.record.withdrawn
        ]

    def local_entries(self, key: bytes) -> list[Entry]:
        now = time.monotonic()
        self._cull_key(key, now)
        return list(self.data.get(key, {}).values())

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:  # an empty storage is still a storage (`storage or default`)
        return True

    # ------------------------------------------------------------------ IStorage

    def __setitem__(self, key: bytes, value: Iterable[object]) -> None:
        self.merge(key, value)

    def __getitem__(self, key: bytes) -> list[WireEntry]:
        entries, _ = self.entries(key)
        if not entries:
            raise KeyError(key)
        return entries

    def get(self, key: bytes, default: Any = None) -> Any:
        entries, _ = self.entries(key)
        return entries or default

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, list[WireEntry]]]:
        """Nothing: soft state is refreshed by its writers, never republished by holders."""
        return []

    def __iter__(self) -> Iterator[tuple[bytes, list[WireEntry]]]:
        self.cull()
        for key in list(self.data):
            entries, _ = self.entries(key)
            if entries:
                yield key, entries
