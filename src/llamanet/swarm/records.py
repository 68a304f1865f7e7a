"""Signed node records: canonical encoding, signing, verification and the compact wire form.

The signature covers `canonical_bytes(record)`: compact, key-sorted JSON of every field except
`signature`. On the wire a record travels as a small msgpack map (binary ids, key and
signature; ~250 bytes for a typical node) that decodes back to the same `NodeRecord`, whose
canonical bytes are then verified. Expiry on the wire is always a *remaining* ttl; `issued_at`
only bounds replays (a record issued longer ago than its ttl plus `CLOCK_SKEW` is refused).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, Final, TypeVar, cast

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.identity import NodeIdentity, node_id_for

_T = TypeVar("_T")

MAX_RECORD_BYTES: Final = 1024  # encoded (wire) size; a typical record is ~250 bytes
CLOCK_SKEW: Final = 300.0  # seconds of clock difference tolerated on `issued_at`
MAX_TTL: Final = 86400.0  # a record claiming a longer life is malformed

REASONS: Final = ("unsigned", "bad_signature", "id_mismatch", "expired", "oversized", "malformed")

# field name -> short wire key; binary fields travel as raw bytes instead of hex
_WIRE_KEYS: Final = {
    "node_id": "i",
    "public_key": "k",
    "url": "u",
    "models": "m",
    "load": "l",
    "active": "a",
    "queued": "q",
    "capacity": "c",
    "tokens_per_second": "t",
    "ttft_ms": "f",
    "version": "v",
    "started_at": "s",
    "seq": "n",
    "issued_at": "o",
    "ttl": "e",
    "withdrawn": "w",
    "swarm": "x",
    "signature": "g",
}
_FIELDS_BY_WIRE_KEY: Final = {short: name for name, short in _WIRE_KEYS.items()}
_HEX_FIELDS: Final = frozenset({"node_id", "public_key", "signature"})


class InvalidRecord(ValueError):
    """A record that must be neither stored nor returned; `reason` is one of `REASONS`
    (storage adds "stale_seq", "wrong_key" and "over_limit")."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def canonical_bytes(record: NodeRecord) -> bytes:
    """The bytes a signature covers: compact sorted-key JSON of every field but `signature`.

    Fields still at their declared default are left out (the verifier restores the same
    default), so adding an optional field to `NodeRecord` keeps older and newer nodes able to
    verify each other's records as long as the new field is unused.
    """
    fields = record.model_dump(mode="json", exclude={"signature"}, exclude_defaults=True)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_record(identity: NodeIdentity, **fields: Any) -> NodeRecord:
    """Build and sign a record; fills `node_id`, `public_key`, `issued_at` (now unless given),
    `seq` (milliseconds since the epoch unless given) and `signature`."""
    fields.pop("signature", None)
    for name, own in (("node_id", identity.node_id), ("public_key", identity.public_key_hex)):
        if fields.setdefault(name, own) != own:
            raise ValueError(f"{name} does not belong to this identity")
    now = time.time()
    fields.setdefault("issued_at", now)
    fields.setdefault("seq", int(now * 1000))
    record = NodeRecord(**fields)
    signature = identity.sign(canonical_bytes(record))
    return record.model_copy(update={"signature": signature.hex()})


def make_tombstone(
    identity: NodeIdentity, record: NodeRecord, *, ttl: float | None = None
) -> NodeRecord:
    """A signed `withdrawn` copy of `record` with a higher seq: it replaces the record at once."""
    fields = record.model_dump(exclude={"signature", "issued_at", "seq", "ttl"})
    fields.update(withdrawn=True, load=0.0, active=0, queued=0)
    seq = max(record.seq + 1, int(time.time() * 1000))
    return sign_record(identity, **fields, seq=seq, ttl=record.ttl if ttl is None else ttl)


def newest_per_node(
    items: Iterable[_T], record_of: Callable[[_T], NodeRecord] | None = None
) -> dict[str, _T]:
    """One item per node id: the one whose record has the highest seq (the first seen on a tie).

    Records of one node are ordered by `seq` alone. `items` are records, or anything holding
    one when `record_of` picks it out (a DHT lookup's entries, a cache's).
    """
    get: Callable[[_T], NodeRecord] = record_of or (lambda item: cast(NodeRecord, item))
    best: dict[str, _T] = {}
    for item in items:
        record = get(item)
        held = best.get(record.node_id)
        if held is None or record.seq > get(held).seq:
            best[record.node_id] = item
    return best


def remaining_ttl(record: NodeRecord, now: float | None = None) -> float:
    """Seconds of life left for a record issued by this machine's clock (own records)."""
    now = time.time() if now is None else now
    return max(0.0, min(record.ttl, record.ttl - (now - record.issued_at)))


# --------------------------------------------------------------------------- wire form


def encode_record(record: NodeRecord) -> bytes:
    """The compact wire form: a msgpack map with short keys (a field without one travels under
    its own name), binary ids, and fields at their default left out."""
    wire: dict[str, Any] = {}
    for name, value in record.model_dump(exclude_defaults=True).items():
        if name in _HEX_FIELDS:
            try:
                value = bytes.fromhex(value)
            except ValueError as exc:
                raise InvalidRecord("malformed", f"{name} is not hex") from exc
        elif name == "models":
            value = [_encode_model(m) for m in value]
        wire[_WIRE_KEYS.get(name, name)] = value
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return packed


def _encode_model(model: dict[str, Any]) -> list[Any]:
    """`[id, n_ctx, quantization]`, plus the capabilities list when there is one, plus the
    fingerprint and runtime (stream resumption) when there are."""
    wire = [model["id"], model["n_ctx"], model.get("quantization")]
    fingerprint = model.get("fingerprint"), model.get("runtime")
    if model.get("capabilities") or any(fingerprint):
        wire.append(model.get("capabilities") or [])
    if any(fingerprint):
        wire.extend(fingerprint)
    return wire


def _decode_model(wire: list[Any]) -> ModelInfo:
    capabilities = wire[3] if len(wire) > 3 else []
    fingerprint = wire[4] if len(wire) > 4 else None
    runtime = wire[5] if len(wire) > 5 else None
    return ModelInfo(
        id=wire[0],
        n_ctx=wire[1],
        quantization=wire[2],
        capabilities=capabilities,
        fingerprint=fingerprint,
        runtime=runtime,
    )


def decode_record(data: bytes) -> NodeRecord:
    """Parse the wire form; raises `InvalidRecord("malformed")` on anything unexpected."""
    try:
        wire = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if not isinstance(wire, dict):
            raise TypeError("not a map")
        fields: dict[str, Any] = {}
        for short, value in wire.items():
            name = _FIELDS_BY_WIRE_KEY.get(short)
            if name is None:
                if short not in NodeRecord.model_fields:
                    continue  # a newer peer's field: the signature check decides
                name = short
            if name in _HEX_FIELDS:
                if not isinstance(value, bytes):
                    raise TypeError(f"{name} must be bytes")
                value = value.hex()
            elif name == "models":
                value = [_decode_model(m) for m in value]
            fields[name] = value
        return NodeRecord(**fields)
    except (ValueError, TypeError, IndexError, KeyError, ValidationError) as exc:
        raise InvalidRecord("malformed", str(exc)[:200]) from exc
    except Exception as exc:  # msgpack's own error types vary between versions
        raise InvalidRecord("malformed", type(exc).__name__) from exc


# --------------------------------------------------------------------------- verification


@lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(record: NodeRecord) -> bool:
    try:
        key = _public_key(bytes.fromhex(record.public_key))
        key.verify(bytes.fromhex(record.signature), canonical_bytes(record))
    except (ValueError, InvalidSignature):
        return False
    return True


def _coerce(obj: object) -> tuple[NodeRecord, int]:
    """Any accepted form -> (record, encoded size)."""
    if isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        if len(data) > MAX_RECORD_BYTES:
            raise InvalidRecord("oversized", f"{len(data)} bytes")
        return decode_record(data), len(data)
    try:
        if isinstance(obj, NodeRecord):
            record = obj
        elif isinstance(obj, str):
            record = NodeRecord.model_validate_json(obj)
        elif isinstance(obj, Mapping):
            record = NodeRecord.model_validate(obj)
        else:
            raise InvalidRecord("malformed", f"cannot read a record from {type(obj).__name__}")
    except ValidationError as exc:
        raise InvalidRecord("malformed", str(exc)[:200]) from exc
    return record, len(encode_record(record))


def verify_record(
    obj: object, *, now: float | None = None, remaining_ttl: float | None = None
) -> NodeRecord:
    """Validate a record (a `NodeRecord`, its wire bytes, a dict or JSON) or raise `InvalidRecord`.

    `remaining_ttl` is the life left as reported by the peer that handed the record over.
    """
    record, size = _coerce(obj)
    return check_record(record, size=size, now=now, remaining_ttl=remaining_ttl)


def check_record(
    record: NodeRecord,
    *,
    size: int,
    now: float | None = None,
    remaining_ttl: float | None = None,
) -> NodeRecord:
    """`verify_record` for an already decoded record of `size` encoded bytes.

    Cheap checks run before the signature check.
    """
    if size > MAX_RECORD_BYTES:
        raise InvalidRecord("oversized", f"{size} bytes")
    if not record.signature:
        raise InvalidRecord("unsigned")
    try:
        public_key = bytes.fromhex(record.public_key)
    except ValueError as exc:
        raise InvalidRecord("malformed", "public_key is not hex") from exc
    if len(public_key) != 32:
        raise InvalidRecord("malformed", "public_key is not 32 bytes")
    if node_id_for(public_key) != record.node_id:
        raise InvalidRecord("id_mismatch")
    if not 0 <= record.seq < 1 << 63:
        raise InvalidRecord("malformed", "seq out of range")
    if not (math.isfinite(record.ttl) and math.isfinite(record.issued_at)):
        raise InvalidRecord("malformed", "non-finite time")
    if record.ttl > MAX_TTL:
        raise InvalidRecord("malformed", f"ttl {record.ttl} above {MAX_TTL}")
    now = time.time() if now is None else now
    if record.issued_at > now + CLOCK_SKEW:
        raise InvalidRecord("malformed", "issued in the future (clock skew?)")
    if record.ttl <= 0 or now - record.issued_at > record.ttl + CLOCK_SKEW:
        raise InvalidRecord("expired", "issued too long ago")
    if remaining_ttl is not None and not remaining_ttl > 0:  # also refuses NaN
        raise InvalidRecord("expired", "no ttl left")
    if not verify_signature(record):
        raise InvalidRecord("bad_signature")
    return record
