"""Record validation shared by storage and lookups: one counter of rejections per reason and a
cache of already verified wire encodings, so a record seen again costs no second signature check."""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict

from llamanet.protocol import NodeRecord
from llamanet.swarm.records import (
    CLOCK_SKEW,
    MAX_RECORD_BYTES,
    InvalidRecord,
    check_record,
    decode_record,
)


def read_ttl(value: object) -> float:
    """A remaining ttl as received from a peer; raises `InvalidRecord("malformed")`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord("malformed", "ttl is not a number")
    ttl = float(value)
    if math.isnan(ttl):
        raise InvalidRecord("malformed", "ttl is NaN")
    return ttl


class RecordValidator:
    """Decodes and verifies wire records, counting every rejection by reason.

    Remembers which encodings passed the signature check (the bytes only: cheap to keep), so a
    record seen again, from another replica or in the next lookup, is not verified twice.
    """

    def __init__(self, cache_size: int = 2048) -> None:
        self.rejected: Counter[str] = Counter()
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size

    def reject(self, reason: str, detail: str = "") -> InvalidRecord:
        self.rejected[reason] += 1
        return InvalidRecord(reason, detail)

    def decode(self, wire: object) -> NodeRecord:
        """Parse without verifying (to compare seqs first); counts and raises on failure."""
        if not isinstance(wire, bytes):
            raise self.reject("malformed", "record is not bytes")
        if len(wire) > MAX_RECORD_BYTES:
            raise self.reject("oversized", f"{len(wire)} bytes")
        try:
            return decode_record(wire)
        except InvalidRecord as exc:
            self.rejected[exc.reason] += 1
            raise

    def verify(self, wire: bytes, remaining: float, record: NodeRecord | None = None) -> NodeRecord:
        """Full check of `wire` (decoded already as `record` if given) with `remaining` ttl."""
        if record is None:
            record = self.decode(wire)
        now = time.time()
        if wire in self._verified:  # content checks passed before; only time can have changed
            if not remaining > 0 or now - record.issued_at > record.ttl + CLOCK_SKEW:
                raise self.reject("expired")
            self._verified.move_to_end(wire)
            return record
        try:
            check_record(record, size=len(wire), now=now, remaining_ttl=remaining)
        except InvalidRecord as exc:
            self.rejected[exc.reason] += 1
            raise
        self._verified[wire] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return record
