"""Discovery: a Kademlia DHT (PyPI `kademlia`, subclassed) holding signed, expiring,
multi-writer node records. `DHTNode` publishes and finds records; `Presence` is the heartbeat."""

from llamanet.swarm.dht.keys import ALL_NODES_SHARDS, all_nodes_key, keys_for, model_key, node_key
from llamanet.swarm.dht.network import DHTNode
from llamanet.swarm.dht.presence import Presence
from llamanet.swarm.dht.storage import RecordStorage
from llamanet.swarm.records import InvalidRecord

__all__ = [
    "ALL_NODES_SHARDS",
    "DHTNode",
    "InvalidRecord",
    "Presence",
    "RecordStorage",
    "all_nodes_key",
    "keys_for",
    "model_key",
    "node_key",
]
