"""DHT key names and the ids they hash to.

`model:<model id>` holds every node serving a model, `all_nodes:<shard>` every node (16 shards by
the first hex digit of the node id, so no key has to list a whole large swarm), `node:<node id>`
one node. Each key holds many nodes' records, keyed by node id (multi-writer).
"""

from __future__ import annotations

import hashlib
from typing import Final

from llamanet.protocol import NodeRecord

ALL_NODES_SHARDS: Final = 16


def digest(key: str) -> bytes:
    """The 160-bit Kademlia id of a key name."""
    return hashlib.sha1(key.encode()).digest()


def model_key(model_id: str) -> str:
    return f"model:{model_id}"


def node_key(node_id: str) -> str:
    return f"node:{node_id}"


def shard_of(node_id: str) -> int:
    try:
        return int(node_id[:1], 16) % ALL_NODES_SHARDS
    except ValueError:  # not hex: such a record never verifies anyway
        return 0


def all_nodes_key(shard: int) -> str:
    return f"all_nodes:{shard}"


def all_nodes_keys() -> list[str]:
    return [all_nodes_key(shard) for shard in range(ALL_NODES_SHARDS)]


def keys_for(record: NodeRecord) -> list[str]:
    """Every key a record is published under."""
    keys = [model_key(info.id) for info in record.models]
    keys.append(all_nodes_key(shard_of(record.node_id)))
    keys.append(node_key(record.node_id))
    return list(dict.fromkeys(keys))


def digests_for(record: NodeRecord) -> set[bytes]:
    """The key ids a record may be stored under: a record can only occupy keys its own content
    names, so a flooder cannot fill arbitrary keys."""
    return {digest(key) for key in keys_for(record)}
