"""Signed node records for tests: the one factory every test module shares.

Tests need many valid `NodeRecord`s (and deliberately broken ones derived from them); building
each by hand, as three modules once did, let their defaults drift apart. Here:

- `make_record(signer, **fields)`: a complete record signed by `signer` (an identity, the name of
  a fake node, or None for a fresh identity); any `NodeRecord` field can be given;
- `record_fields(**fields)`: the fields `make_record` signs, for tests of `sign_record` itself;
- `identity(name)` / `node_id(name)`: a named fake node keeps one identity for the whole run (its
  records' default url is `http://<name>.test`); `bump(record, **changes)`: a newer version of a
  record, signed by the same identity;
- `StartNode`: the type of conftest's `start_node` fixture.

Import it as `from factories import make_record` (pytest puts `tests/` on `sys.path`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from llamanet.cli.launcher import NodeProcess
from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import sign_record

__all__ = [
    "MODEL",
    "StartNode",
    "bump",
    "identity",
    "identity_of",
    "make_record",
    "node_id",
    "record_fields",
]

MODEL = "tinyllama-1.1b-chat"  # the default model id of a factory record

StartNode: TypeAlias = Callable[..., NodeProcess]

_BY_NAME: dict[str, NodeIdentity] = {}
_BY_NODE_ID: dict[str, NodeIdentity] = {}


def _remember(new: NodeIdentity) -> NodeIdentity:
    _BY_NODE_ID[new.node_id] = new
    return new


def identity(name: str) -> NodeIdentity:
    """The identity of fake node `name`: generated once, the same for the whole test run."""
    if name not in _BY_NAME:
        _BY_NAME[name] = _remember(NodeIdentity.generate())
    return _BY_NAME[name]


def node_id(name: str) -> str:
    """The node id of fake node `name`."""
    return identity(name).node_id


def identity_of(record_node_id: str) -> NodeIdentity:
    """The identity that signed a factory record (KeyError for a record made elsewhere)."""
    return _BY_NODE_ID[record_node_id]


def record_fields(
    *,
    models: Sequence[str | ModelInfo] = (MODEL,),
    n_ctx: int = 2048,
    url: str = "http://127.0.0.1:8000",
    version: str = "test",
    started_at: float | None = None,
    ttl: float = 30.0,
    **fields: Any,
) -> dict[str, Any]:
    """The fields of a valid record (`sign_record` adds the identity, seq, issued_at and the
    signature). `models`: model ids (served with `n_ctx`) or full `ModelInfo`s."""
    return {
        "url": url,
        "models": [m if isinstance(m, ModelInfo) else ModelInfo(id=m, n_ctx=n_ctx) for m in models],
        "version": version,
        "started_at": time.time() if started_at is None else started_at,
        "ttl": ttl,
        **fields,
    }


def make_record(signer: NodeIdentity | str | None = None, **fields: Any) -> NodeRecord:
    """A signed, valid record of `signer` (a fresh identity if None). `fields` are passed to
    `record_fields`: any `NodeRecord` field (`seq`, `issued_at`, `load`, `withdrawn`, ...)."""
    if isinstance(signer, str):
        fields.setdefault("url", f"http://{signer}.test")
        signer = identity(signer)
    elif signer is None:
        signer = _remember(NodeIdentity.generate())
    else:
        _remember(signer)
    fields.setdefault("url", f"http://{signer.node_id[:12]}.test")
    return sign_record(signer, **record_fields(**fields))


def bump(record: NodeRecord, **changes: Any) -> NodeRecord:
    """A newer signed version of a factory record (seq + 1, issued now), with `changes`."""
    fields = record.model_dump(exclude={"signature", "node_id", "public_key", "issued_at"})
    fields.update(seq=record.seq + 1, **changes)
    return sign_record(identity_of(record.node_id), **fields)
