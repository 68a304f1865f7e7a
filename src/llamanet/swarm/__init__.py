"""The swarm layer: who a node is, what it publishes, how peers find and choose each other.

Pure swarm concerns, shared by nodes and clients: `identity` (ed25519 keys, node ids), `records`
(signed, expiring `NodeRecord`s), `membership` (private-swarm proofs), `selector` (ranking and
the failover policy), `dht/` (the Kademlia DHT that carries the records). Never imports `node`
or `client`.
"""
