"""Iterative lookups that keep going past the first answer and never wait long on a dead peer.

The stock crawls advance in lock-step rounds of `alpha` requests, so one dead peer stalls a whole
round for the RPC timeout, and `ValueSpiderCrawl` stops at the first value found. Here `alpha`
requests stay in flight; a request that outlives `straggler_timeout()` (about srtt + 4 rttvar)
stops counting against `alpha` and no longer holds up the result; once replies stop bringing
closer nodes, every remaining one of the k closest is asked at once (the stock "wide" round).
Straggling is judged only while this process runs: a wait that wakes up late (a stall of this
process) is not a timeout, and the replies already waiting in the socket are read before any
peer is called slow (`take_in`).
`RecordCrawl` merges the entries of *every* peer among the k closest: newest seq per node id.
(docs/dht.md, defects 1 and 7.)
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kademlia.crawling import NodeSpiderCrawl, SpiderCrawl, ValueSpiderCrawl
from kademlia.node import Node, NodeHeap

from llamanet.protocol import NodeRecord
from llamanet.swarm.dht.peer_protocol import encode_have
from llamanet.swarm.dht.validation import RecordValidator, read_ttl
from llamanet.swarm.records import InvalidRecord

if TYPE_CHECKING:
    from llamanet.swarm.dht.peer_protocol import DHTProtocol

log = logging.getLogger(__name__)

QUORUM = 0.75  # share of the k closest whose answers end a lookup after a short grace
MAX_ENTRIES_PER_REPLY = 64  # an honest page holds ~30 (7 KiB); more is a peer wasting our CPU
MAX_PAGES = 16  # `get` pages asked of one peer in one lookup (each up to ~7 KiB of records)
LATE_WAKEUP = 0.02  # a wait that ends this much past its deadline: this process had stalled


class IndexedNodeHeap(NodeHeap):
    """`NodeHeap` kept as a sorted list (a valid heap) with O(1) membership, so iterating the
    nearest is a slice instead of a `heapq.nsmallest`; a node removed as unresponsive is never
    re-added."""

    heap: list[tuple[int, Node]]

    def __init__(self, node: Node, maxsize: int) -> None:
        super().__init__(node, maxsize)
        self._ids: set[bytes] = set()
        self._removed: set[bytes] = set()

    def push(self, nodes: Node | list[Node]) -> None:
        target = self.node.long_id
        for node in nodes if isinstance(nodes, list) else [nodes]:
            if node.id in self._ids or node.id in self._removed:
                continue
            self._ids.add(node.id)
            bisect.insort(self.heap, (node.long_id ^ target, node))

    def remove(self, peers: Iterable[bytes]) -> None:
        peers = set(peers)
        self._removed |= peers
        self._ids -= peers
        self.heap = [item for item in self.heap if item[1].id not in peers]

    def __iter__(self) -> Iterator[Node]:
        return iter([node for _, node in self.heap[: self.maxsize]])

    def __contains__(self, node: object) -> bool:
        return isinstance(node, Node) and node.id in self._ids


class WindowedCrawl(SpiderCrawl):
    """Base of both lookups: keeps `alpha` requests in flight, tolerates stragglers."""

    protocol: DHTProtocol

    def __init__(
        self, protocol: DHTProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        super().__init__(protocol, node, [], ksize, alpha)
        self.nearest = IndexedNodeHeap(node, ksize)
        self.responded: set[bytes] = set()
        self.wide = False  # converged: asking every remaining one of the k closest at once
        self.add_nodes(peers)

    def add_nodes(self, nodes: list[Node]) -> None:
        own = self.protocol.source_node.id
        is_dead = self.protocol.is_dead
        self.nearest.push(
            [node for node in nodes if node.id != own and not is_dead((node.ip, node.port))]
        )

    async def _query(self, peer: Node) -> list[Node] | None:
        """Ask one peer; the nodes it returned, or None if it did not answer."""
        raise NotImplementedError

    async def _ask(self, peer: Node) -> list[Node] | None:
        try:
            return await self._query(peer)
        except Exception as exc:  # a bug or an oversized request must not kill the lookup
            log.debug("query to %s failed: %r", peer, exc)
            return None

    def _quorum_answered(self) -> bool:
        """Most of the k closest have answered: the rest get only a short grace period
        (every record lives on about k peers, so a few silent ones lose nothing)."""
        nearest = [node.id for node in self.nearest]
        answered = sum(node_id in self.responded for node_id in nearest)
        return answered >= QUORUM * len(nearest)

    def _closest_id(self) -> bytes | None:
        for node in self.nearest:
            node_id: bytes = node.id
            return node_id
        return None

    async def _crawl(self) -> None:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Future[list[Node] | None], Node] = {}
        slow: set[asyncio.Future[list[Node] | None]] = set()
        self.wide = False
        idle = 0  # consecutive replies that brought no closer node
        while True:
            uncontacted = self.nearest.get_uncontacted()
            limit = self.ksize if self.wide else self.alpha
            budget = limit - (len(pending) - len(slow))
            for peer in uncontacted[: max(0, budget)]:
                self.nearest.mark_contacted(peer)
                pending[asyncio.ensure_future(self._ask(peer))] = peer
            all_asked = len(uncontacted) <= max(0, budget)
            if len(pending) == len(slow) and all_asked:
                break  # nothing left to ask; whatever is still out is a straggler
            timeout = self.protocol.straggler_timeout()
            if all_asked and self._quorum_answered():
                timeout = min(timeout, self.protocol.grace_timeout())
            deadline = loop.time() + timeout
            done, _ = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                if loop.time() - deadline > LATE_WAKEUP:
                    # this process was not running (a long garbage collection, descheduled, a
                    # burst of work on this loop): the timer fires before the replies that came
                    # meanwhile are read from the socket, so they are not late; look again
                    continue
                # replies may still be unread when the timer fires: read them (or another lookup
                # just did), and let the queries they answer finish, before calling anyone slow
                self.protocol.take_in()
                await asyncio.sleep(0)
                done = {future for future in pending if future.done()}
                if not done:
                    slow.update(pending)
                    continue
            for future in done:
                peer = pending.pop(future)
                slow.discard(future)
                nodes = future.result()
                if nodes is None:
                    self.nearest.remove([peer.id])
                    continue
                self.responded.add(peer.id)
                before = self._closest_id()
                self.add_nodes(nodes)
                idle = 0 if self._closest_id() != before else idle + 1
            if idle >= self.alpha:
                self.wide = True

    def closest_responders(self) -> list[Node]:
        return [node for node in self.nearest if node.id in self.responded]


class NodeCrawl(WindowedCrawl, NodeSpiderCrawl):
    """Find the k closest live nodes to an id."""

    async def _query(self, peer: Node) -> list[Node] | None:
        ok, nodes = await self.protocol.call_find_node(peer, self.node)
        return nodes if ok else None

    async def find(self) -> list[Node]:
        await self._crawl()
        return self.closest_responders()


@dataclass(slots=True)
class Found:
    record: NodeRecord
    wire: bytes
    expires: float  # deadline on time.monotonic()


class RecordCrawl(WindowedCrawl, ValueSpiderCrawl):
    """Collect every record held for a key by the k closest peers, newest seq per node id."""

    def __init__(
        self,
        protocol: DHTProtocol,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        validator: RecordValidator,
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.validator = validator
        self.found: dict[str, Found] = {}
        self._by_wire: dict[bytes, str] = {}
        self._have: bytes | None = None

    def have(self) -> bytes:
        if self._have is None:  # rebuilt only after `found` changed
            self._have = encode_have(
                (bytes.fromhex(node_id[:16]), item.record.seq)
                for node_id, item in self.found.items()
            )
        return self._have

    async def _query(self, peer: Node) -> list[Node] | None:
        nodes: list[Node] | None = None
        # once converged, the k closest are asked for records only: no more routing needed
        want_nodes = not self.wide
        for _ in range(MAX_PAGES):
            ok, reply = await self.protocol.call_get(peer, self.node.id, self.have(), want_nodes)
            if not ok:
                return nodes
            page_nodes, entries, more = reply
            if nodes is None:
                nodes = page_nodes
            rejected = self.merge(entries)
            if not more or not entries or rejected:
                break  # an honest peer validated what it holds: no more pages from a liar
        return nodes

    def merge(self, entries: list[Any]) -> int:
        """Merge `[wire, remaining ttl]` entries; returns how many were invalid."""
        now = time.monotonic()
        validator = self.validator
        before = validator.rejected.total()
        for item in entries[:MAX_ENTRIES_PER_REPLY]:
            if not isinstance(item, list | tuple) or len(item) != 2:
                validator.reject("malformed", "entry is not [record, ttl]")
                continue
            wire, ttl_value = item
            try:
                ttl = read_ttl(ttl_value)
            except InvalidRecord as exc:
                validator.rejected[exc.reason] += 1
                continue
            if ttl <= 0:
                continue  # about to expire at the sender: not an offence
            known = self._by_wire.get(wire) if isinstance(wire, bytes) else None
            if known is not None:  # the very record we hold: at most a longer life
                item_found = self.found[known]
                item_found.expires = max(item_found.expires, now + min(ttl, item_found.record.ttl))
                continue
            try:
                record = validator.decode(wire)
                current = self.found.get(record.node_id)
                if current is not None and current.record.seq >= record.seq:
                    continue
                validator.verify(wire, ttl, record)
            except InvalidRecord:
                continue
            if current is not None:
                self._by_wire.pop(current.wire, None)
            self.found[record.node_id] = Found(record, wire, now + min(ttl, record.ttl))
            self._by_wire[wire] = record.node_id
            self._have = None
        return validator.rejected.total() - before

    async def find(self) -> dict[str, Found]:
        await self._crawl()
        return self.found
