"""Node identity persistence and signed record validation."""

from __future__ import annotations

import hashlib
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import (
    MAX_RECORD_BYTES,
    InvalidRecord,
    canonical_bytes,
    decode_record,
    encode_record,
    make_tombstone,
    sign_record,
    verify_record,
)

from factories import record_fields


def _fields(**overrides: Any) -> dict[str, Any]:
    """A fully described node (every field set, so round trips and size checks cover them)."""
    full: dict[str, Any] = {
        "models": [ModelInfo(id="tinyllama-1.1b-chat", n_ctx=2048, quantization="Q4_K_M")],
        "load": 0.25,
        "active": 1,
        "queued": 2,
        "capacity": 4,
        "tokens_per_second": 41.5,
        "ttft_ms": 120.0,
        "version": "0.1.0",
        "started_at": time.time() - 60,
    }
    return record_fields(**{**full, **overrides})


def _reason(obj: object, **kwargs: float) -> str:
    with pytest.raises(InvalidRecord) as info:
        verify_record(obj, **kwargs)
    return info.value.reason


# --------------------------------------------------------------------------- identity


def test_identity_persists_across_restarts(tmp_path: Path) -> None:
    first = NodeIdentity.load_or_create(tmp_path / "home")
    second = NodeIdentity.load_or_create(tmp_path / "home")
    assert first.node_id == second.node_id
    assert first.public_key_hex == second.public_key_hex
    key_file = tmp_path / "home" / "node_key"
    assert len(key_file.read_bytes()) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.node_id == hashlib.sha1(bytes.fromhex(first.public_key_hex)).hexdigest()
    assert len(first.node_id) == 40


def test_different_homes_have_different_ids(tmp_path: Path) -> None:
    assert (
        NodeIdentity.load_or_create(tmp_path / "a").node_id
        != NodeIdentity.load_or_create(tmp_path / "b").node_id
    )


def test_identity_loads_pem_and_tightens_permissions(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "node_key").write_bytes(pem)
    (tmp_path / "node_key").chmod(0o644)
    identity = NodeIdentity.load_or_create(tmp_path)
    raw_public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert identity.public_key_hex == raw_public.hex()
    assert stat.S_IMODE((tmp_path / "node_key").stat().st_mode) == 0o600


def test_corrupt_key_file_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "node_key").write_bytes(b"not a key")
    with pytest.raises(ValueError):
        NodeIdentity.load_or_create(tmp_path)
    assert (tmp_path / "node_key").read_bytes() == b"not a key"


def test_signatures_verify() -> None:
    identity = NodeIdentity.generate()
    public = Ed25519PrivateKey.from_private_bytes(identity.private_bytes()).public_key()
    public.verify(identity.sign(b"hello"), b"hello")


# --------------------------------------------------------------------------- records


def test_signed_record_round_trips_and_stays_small() -> None:
    identity = NodeIdentity.generate()
    record = sign_record(identity, **_fields())
    assert record.node_id == identity.node_id
    assert record.public_key == identity.public_key_hex
    wire = encode_record(record)
    assert len(wire) < 350
    assert decode_record(wire) == record
    assert verify_record(wire) == record
    assert verify_record(record) == record
    assert verify_record(record.model_dump()) == record
    assert verify_record(record.model_dump_json()) == record


def test_model_capabilities_travel_signed_and_small() -> None:
    identity = NodeIdentity.generate()
    caps = ["chat", "completions", "tools", "json_schema", "logprobs"]
    models = [ModelInfo(id="smol", n_ctx=2048, quantization="Q4_1", capabilities=caps)]
    record = sign_record(identity, **{**_fields(), "models": models})
    wire = encode_record(record)
    assert len(wire) < 400
    assert verify_record(wire) == record and record.models[0].capabilities == caps


def test_canonical_bytes_cover_everything_but_the_signature() -> None:
    identity = NodeIdentity.generate()
    record = sign_record(identity, **_fields())
    assert b"signature" not in canonical_bytes(record)
    assert canonical_bytes(record) == canonical_bytes(record.model_copy(update={"signature": ""}))
    assert canonical_bytes(record) != canonical_bytes(record.model_copy(update={"load": 0.5}))


def test_unsigned_record_is_rejected() -> None:
    record = sign_record(NodeIdentity.generate(), **_fields()).model_copy(update={"signature": ""})
    assert _reason(record) == "unsigned"
    assert _reason(encode_record(record)) == "unsigned"


def test_record_signed_by_another_key_is_rejected() -> None:
    owner, forger = NodeIdentity.generate(), NodeIdentity.generate()
    record = sign_record(owner, **_fields())
    forged = record.model_copy(update={"signature": forger.sign(canonical_bytes(record)).hex()})
    assert _reason(forged) == "bad_signature"
    assert _reason(encode_record(forged)) == "bad_signature"


def test_tampered_record_is_rejected() -> None:
    record = sign_record(NodeIdentity.generate(), **_fields())
    assert _reason(record.model_copy(update={"load": 0.0})) == "bad_signature"
    assert _reason(record.model_copy(update={"url": "http://evil:1"})) == "bad_signature"


def test_node_id_must_match_the_key() -> None:
    signer, victim = NodeIdentity.generate(), NodeIdentity.generate()
    unsigned = NodeRecord(
        **_fields(),
        node_id=victim.node_id,  # claims someone else's id ...
        public_key=signer.public_key_hex,  # ... with its own key, correctly signed
        seq=1,
        issued_at=time.time(),
    )
    record = unsigned.model_copy(update={"signature": signer.sign(canonical_bytes(unsigned)).hex()})
    assert _reason(record) == "id_mismatch"
    with pytest.raises(ValueError):
        sign_record(signer, **_fields(), node_id=victim.node_id)


def test_expired_records_are_rejected() -> None:
    identity = NodeIdentity.generate()
    old = sign_record(identity, **_fields(ttl=30.0), issued_at=time.time() - 30 - 301)
    assert _reason(old) == "expired"
    fresh = sign_record(identity, **_fields(ttl=30.0))
    assert _reason(fresh, remaining_ttl=0.0) == "expired"
    assert _reason(fresh, remaining_ttl=-3.0) == "expired"
    assert verify_record(fresh, remaining_ttl=12.5) == fresh
    # within the allowed clock skew a slightly old record is still fine
    skewed = sign_record(identity, **_fields(ttl=30.0), issued_at=time.time() - 200)
    assert verify_record(skewed) == skewed


def test_oversized_record_is_rejected() -> None:
    record = sign_record(NodeIdentity.generate(), **_fields(url="http://x/" + "a" * 1200))
    assert len(encode_record(record)) > MAX_RECORD_BYTES
    assert _reason(record) == "oversized"
    assert _reason(encode_record(record)) == "oversized"


def test_malformed_input_is_rejected() -> None:
    assert _reason(b"\x93garbage") == "malformed"
    assert _reason({"node_id": "x"}) == "malformed"
    assert _reason("{not json") == "malformed"
    assert _reason(12) == "malformed"
    record = sign_record(NodeIdentity.generate(), **_fields())
    assert _reason(record.model_copy(update={"public_key": "zz"})) == "malformed"


def test_tombstone_supersedes_and_verifies() -> None:
    identity = NodeIdentity.generate()
    record = sign_record(identity, **_fields())
    tombstone = make_tombstone(identity, record)
    assert tombstone.withdrawn
    assert tombstone.seq > record.seq
    assert tombstone.models == record.models
    assert verify_record(encode_record(tombstone)) == tombstone


def test_a_new_optional_field_at_its_default_keeps_signatures_valid() -> None:
    """Rolling upgrades: a newer node's record verifies on an older node while the field it
    added is unused (defaults stay out of the canonical bytes and off the wire)."""

    class NewerRecord(NodeRecord):
        region: str = ""

    identity = NodeIdentity.generate()
    record = sign_record(identity, **_fields())
    newer = NewerRecord(**record.model_dump())
    assert canonical_bytes(newer) == canonical_bytes(record)
    assert verify_record(newer.model_dump(exclude={"region"})) == record
    used = NewerRecord(**record.model_dump(exclude={"signature"}), region="eu")
    signed = used.model_copy(update={"signature": identity.sign(canonical_bytes(used)).hex()})
    assert _reason(signed.model_dump(exclude={"region"})) == "bad_signature"
