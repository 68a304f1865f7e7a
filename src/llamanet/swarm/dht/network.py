"""`DHTNode`: publish a node's signed record, find the records of the nodes serving a model.

Built on `kademlia.network.Server` (subclassed as `RecordServer`): C msgpack RPC with a short
timeout (`rpc.py`), exact k-nearest routing (`routing.py`), merging lookups (`crawling.py`) and
per-entry-expiring multi-writer storage (`storage.py`). The library's hourly republish is off:
records are soft state that their writers refresh every heartbeat. What each part fixes in the
stock library: docs/dht.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from kademlia.network import Server
from kademlia.node import Node

from llamanet.protocol import NodeRecord
from llamanet.swarm.dht.crawling import Found, NodeCrawl, RecordCrawl
from llamanet.swarm.dht.keys import (
    all_nodes_keys,
    digest,
    digests_for,
    keys_for,
    model_key,
    node_key,
)
from llamanet.swarm.dht.peer_protocol import DHTProtocol
from llamanet.swarm.dht.rpc import Address
from llamanet.swarm.dht.storage import RecordStorage, WireEntry
from llamanet.swarm.dht.validation import RecordValidator
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import encode_record, newest_per_node, remaining_ttl, verify_record

log = logging.getLogger(__name__)

RCVBUF_BYTES: Final = 4 << 20  # bursts of ~8 KiB replies overflow the default 208 KiB buffer
MAINTENANCE_EVERY: Final = 2.0
PROBE_EVERY: Final = 10.0  # ping up to PROBES_PER_ROUND contacts not heard from in STALE_AFTER
PROBES_PER_ROUND: Final = 8
STALE_AFTER: Final = 30.0
REPLICAS_FRESH_FOR: Final = 60.0  # re-run the node lookup for a key's replicas this often


class RecordServer(Server):
    """`kademlia.network.Server` wired to the record protocol and storage."""

    protocol_class = DHTProtocol
    protocol: DHTProtocol
    storage: RecordStorage

    def __init__(
        self,
        ksize: int,
        alpha: int,
        node_id: bytes,
        storage: RecordStorage,
        *,
        rpc_timeout: float,
        light: bool,
    ) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id, storage=storage)
        self.rpc_timeout = rpc_timeout
        self.light = light
        self.rcvbuf = 0

    def _create_protocol(self) -> DHTProtocol:
        return self.protocol_class(
            self.node, self.storage, self.ksize, rpc_timeout=self.rpc_timeout, light=self.light
        )

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((interface, port))
        except OSError:
            sock.close()
            raise
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            self._create_protocol, sock=sock
        )
        self.protocol.read_from(sock)
        self.refresh_table()

    async def _refresh_table(self) -> None:
        """Refresh idle buckets only; the stock version also republishes every stored value."""
        crawls = [
            NodeCrawl(
                self.protocol,
                Node(node_id),
                self.protocol.router.find_neighbors(Node(node_id), self.alpha),
                self.ksize,
                self.alpha,
            ).find()
            for node_id in self.protocol.get_refresh_ids()
        ]
        await asyncio.gather(*crawls, return_exceptions=True)

    async def bootstrap_node(self, addr: Address) -> Node | None:
        return await self.protocol.ping_address(addr)

    async def bootstrap(self, addrs: list[Address]) -> list[Node]:
        gathered = await asyncio.gather(*(self.bootstrap_node(addr) for addr in addrs))
        nodes = [node for node in gathered if node is not None]
        if not nodes:
            return []
        return await NodeCrawl(self.protocol, self.node, nodes, self.ksize, self.alpha).find()

    async def set_digest(self, dkey: bytes, value: Any) -> bool:
        """Store wire entries at the k closest nodes; False (never a crash) if none answered."""
        nodes = await self.closest_nodes(dkey)
        if not nodes:
            return False
        results = await asyncio.gather(
            *(self.protocol.call_put(node, dkey, list(value)) for node in nodes)
        )
        return any(ok for ok, _ in results)

    async def closest_nodes(self, dkey: bytes) -> list[Node]:
        target = Node(dkey)
        nearest = self.protocol.router.find_neighbors(target)
        if not nearest:
            return []
        return await NodeCrawl(self.protocol, target, nearest, self.ksize, self.alpha).find()


class DHTNode:
    """A DHT peer that publishes signed node records and finds them.

    `identity=None` makes a light client: random node id, never published, never added to
    other peers' routing tables.
    """

    def __init__(
        self,
        identity: NodeIdentity | None = None,
        *,
        ksize: int = 20,
        alpha: int = 3,
        rpc_timeout: float = 1.5,
    ) -> None:
        self.identity = identity
        self.light = identity is None
        self.ksize = ksize
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.validator = RecordValidator()
        self.storage = RecordStorage(self.validator)
        node_id = identity.node_id_bytes if identity is not None else os.urandom(20)
        self._server = RecordServer(
            ksize, alpha, node_id, self.storage, rpc_timeout=rpc_timeout, light=self.light
        )
        self._host = "127.0.0.1"
        self._port = 0
        self._maintenance: asyncio.Task[None] | None = None
        self._replicas: dict[bytes, tuple[list[Node], float]] = {}
        self._published_models: dict[str, float] = {}  # model id -> wall time its record expires
        self._last_record: NodeRecord | None = None
        self.keys_published = 0
        self.last_publish: float | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def protocol(self) -> DHTProtocol:
        if self._server.protocol is None:
            raise RuntimeError("DHTNode.start() has not been called")
        return self._server.protocol

    @property
    def port(self) -> int:
        return self._port

    @property
    def node_id(self) -> str:
        node_id: bytes = self._server.node.id
        return node_id.hex()

    @property
    def address(self) -> Address:
        return (self._host, self._port)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await self._server.listen(port, interface=host)
        sockname = self._server.transport.get_extra_info("sockname")
        self._host, self._port = host, sockname[1]
        self._maintenance = asyncio.create_task(self._maintain())
        log.info(
            "dht node %s bound to udp %s:%d%s",
            self.node_id[:12],
            host,
            self._port,
            " (light client)" if self.light else "",
        )

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        self._server.stop()
        if self._server.protocol is not None:
            self._server.protocol.cancel_tasks()
            self._server.protocol.fail_outstanding()

    async def bootstrap(self, peers: list[tuple[str, int]]) -> int:
        """Join through `peers` (unreachable ones are skipped); contacts known afterwards."""
        addresses = await self._resolve(peers)
        own = {self.address, ("127.0.0.1", self._port), ("localhost", self._port)}
        addresses = [addr for addr in addresses if addr not in own]
        if addresses:
            try:
                await self._server.bootstrap(addresses)
            except Exception as exc:  # never raise on a bad peer list
                log.warning("bootstrap through %s failed: %r", addresses, exc)
        return len(self.protocol.router)

    async def _resolve(self, peers: Iterable[tuple[str, int]]) -> list[Address]:
        loop = asyncio.get_running_loop()
        out: list[Address] = []
        for host, port in peers:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except (OSError, UnicodeError, ValueError) as exc:
                log.warning("cannot resolve bootstrap peer %s:%s: %s", host, port, exc)
                continue
            for family, *_, sockaddr in infos:
                if family == socket.AF_INET or (family == socket.AF_INET6 and ":" in self._host):
                    out.append((str(sockaddr[0]), int(sockaddr[1])))
                    break
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------------ publishing

    async def publish(self, record: NodeRecord) -> None:
        """Store this node's record under `model:<id>` for each model, its `all_nodes` shard
        and `node:<node_id>` (and under models it stopped serving, so it leaves those at once)."""
        if self.identity is None:
            raise RuntimeError("a light client (no identity) never publishes")
        if record.node_id != self.identity.node_id:
            raise ValueError("a node publishes only its own record")
        verify_record(record)
        now = time.time()
        remaining = remaining_ttl(record, now)
        if remaining <= 0:
            raise ValueError("the record has already expired")
        models = {info.id for info in record.models}
        for model_id in [m for m, until in self._published_models.items() if until <= now]:
            del self._published_models[model_id]
        stale_models = set(self._published_models) - models
        for model_id in models:
            self._published_models[model_id] = now + remaining
        keys = keys_for(record) + [model_key(m) for m in sorted(stale_models)]
        entry: WireEntry = [encode_record(record), round(remaining, 3)]
        await asyncio.gather(*(self._store(digest(key), entry) for key in keys))
        self._last_record = record
        self.keys_published = len(keys)
        self.last_publish = time.time()

    async def withdraw(self, record: NodeRecord) -> None:
        """Publish a tombstone (signed, `withdrawn=True`, higher seq): lookups drop the node.

        Besides the replicas of its keys, every contact in the routing table is handed it
        directly (under `node:<id>`, a key any peer may hold): the peers this node knows are
        the ones likely to route to it, and their caches drop it as soon as it arrives
        (`on_withdrawn`) instead of at their next lookup.
        """
        if not record.withdrawn:
            raise ValueError("withdraw() takes a tombstone (withdrawn=True)")
        await self.publish(record)
        dkey = digest(node_key(record.node_id))
        told = {node.id for node in self._replicas.get(dkey, ([], 0.0))[0]}
        contacts = [node for node in self.protocol.router.contacts() if node.id not in told]
        if contacts:
            entry: WireEntry = [encode_record(record), round(remaining_ttl(record), 3)]
            futures = self.protocol.put_many(contacts, dkey, [entry])
            await asyncio.wait(futures, timeout=self.protocol.straggler_timeout())

    def on_withdrawn(self, callback: Callable[[NodeRecord], None]) -> None:
        """Call `callback(tombstone)` when a peer's tombstone reaches this node's storage."""
        self.storage.on_withdrawn(callback)

    async def _store(self, dkey: bytes, entry: WireEntry) -> None:
        self.storage.put(dkey, entry[0], entry[1])  # own record: always held locally too
        nodes = await self._replica_nodes(dkey)
        if not nodes:
            return

        def replica_failed() -> None:  # look the replicas up afresh next time
            self._replicas.pop(dkey, None)

        futures = self.protocol.put_many(nodes, dkey, [entry], on_failure=replica_failed)
        # live replicas answer within a round trip; a dead one is not worth its full timeout
        await asyncio.wait(futures, timeout=self.protocol.straggler_timeout())

    async def _replica_nodes(self, dkey: bytes) -> list[Node]:
        cached = self._replicas.get(dkey)
        if cached is not None and time.monotonic() - cached[1] < REPLICAS_FRESH_FOR:
            return cached[0]
        nodes = await self._server.closest_nodes(dkey)
        if nodes:
            self._replicas[dkey] = (nodes, time.monotonic())
        return nodes

    # ------------------------------------------------------------------ lookups

    async def find_nodes(self, model: str | None = None) -> list[NodeRecord]:
        """Live, verified records of the nodes serving `model` (of every node if None),
        newest seq per node; withdrawn nodes are left out."""
        keys = [model_key(model)] if model is not None else all_nodes_keys()
        results = await asyncio.gather(*(self._lookup(key) for key in keys))
        merged = newest_per_node(
            (item for found in results for item in found.values()), lambda item: item.record
        )
        now = time.monotonic()
        return sorted(
            (
                item.record
                for item in merged.values()
                if not item.record.withdrawn and item.expires > now and item.record.serves(model)
            ),
            key=lambda record: record.node_id,
        )

    async def find_node(self, node_id: str) -> NodeRecord | None:
        found = await self._lookup(node_key(node_id))
        item = found.get(node_id)
        if item is None or item.record.withdrawn or item.expires <= time.monotonic():
            return None
        return item.record

    async def _lookup(self, key: str) -> dict[str, Found]:
        """Every record the k closest peers hold under `key`, newest seq per node, keeping only
        records that belong there (what a peer serves is checked like what it stores)."""
        dkey = digest(key)
        target = Node(dkey)
        crawl = RecordCrawl(
            self.protocol,
            target,
            self.protocol.router.find_neighbors(target),
            self.ksize,
            self.alpha,
            self.validator,
        )
        for entry in self.storage.local_entries(dkey):  # what this node holds counts too
            crawl.merge([[entry.wire, entry.expires - time.monotonic()]])
        found = await crawl.find()
        kept: dict[str, Found] = {}
        for node_id, item in found.items():
            if item.record.withdrawn or dkey in digests_for(item.record):
                kept[node_id] = item
            elif not key.startswith("model:"):
                # a node id fixes its shard and node keys: a peer served a record from elsewhere
                # (under a model key it is a node that stopped serving that model: just left out)
                self.validator.reject("wrong_key")
        return kept

    # ------------------------------------------------------------------ upkeep and status

    async def _maintain(self) -> None:
        last_probe = time.monotonic()
        while True:
            await asyncio.sleep(MAINTENANCE_EVERY)
            try:
                self.storage.cull()
                now = time.monotonic()
                if now - last_probe >= PROBE_EVERY:
                    last_probe = now
                    self.protocol.prune()
                    await self._probe_stale_contacts()
                for dkey in [k for k, (_, at) in self._replicas.items() if now - at > 300]:
                    del self._replicas[dkey]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("DHT maintenance failed")

    async def _probe_stale_contacts(self) -> None:
        """Ping contacts not heard from lately, so dead ones leave the table (and stop being
        handed to others) even when no lookup happens to touch them."""
        protocol = self.protocol
        now = time.monotonic()
        stale = [
            node
            for node in protocol.router.contacts()
            if now - protocol.last_seen.get((node.ip, node.port), 0.0) > STALE_AFTER
        ]
        stale.sort(key=lambda node: protocol.last_seen.get((node.ip, node.port), 0.0))
        await asyncio.gather(*(protocol.call_ping(node) for node in stale[:PROBES_PER_ROUND]))

    def contacts(self) -> list[Address]:
        """The addresses of the peers in the routing table, most recently heard from first."""
        protocol: DHTProtocol | None = self._server.protocol  # None until started
        if protocol is None:
            return []
        seen = protocol.last_seen
        nodes = sorted(
            protocol.router.contacts(), key=lambda n: seen.get((n.ip, n.port), 0.0), reverse=True
        )
        return [(node.ip, node.port) for node in nodes]

    def status(self) -> dict[str, Any]:
        protocol = self._server.protocol
        contacts = protocol.router.contacts() if protocol is not None else []
        return {
            "node_id": self.node_id,
            "address": f"{self._host}:{self._port}",
            "light": self.light,
            "routing_table_size": len(contacts),
            "peers": [f"{node.ip}:{node.port}" for node in contacts],
            "keys_published": self.keys_published,
            "last_publish": self.last_publish,
            "invalid_records": dict(self.validator.rejected),
            "records_stored": len(self.storage),
            "keys_stored": len(self.storage.data),
            "dead_peers": len(protocol.dead_peers()) if protocol is not None else 0,
            "rpc": dict(protocol.stats) if protocol is not None else {},
            "rcvbuf": self._server.rcvbuf,
        }
