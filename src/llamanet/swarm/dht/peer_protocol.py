"""The Kademlia protocol for signed multi-writer records.

RPCs (all synchronous handlers; see `rpc.py` for the transport):
- `ping(nodeid)` -> our id; `find_node(nodeid, key)` -> `[[id, ip, port], ...]` (exact k nearest);
- `put(nodeid, key, entries)` -> how many of the `[record, remaining ttl]` entries were accepted;
- `get(nodeid, key, have[, want_nodes])` -> `[nodes, entries, more]`: the k nearest contacts
  (unless `want_nodes` is false) *and* every entry held for `key` except those listed in `have`
  (8-byte node-id prefix + 8-byte seq, repeated) at an equal or newer seq, up to `GET_BUDGET`
  bytes; `more` asks the caller to come back for the rest.
  Returning both lets a lookup merge what all k closest peers hold instead of stopping at the
  first value.
The stock `store` refuses (values must be signed records) and `find_value` answers like
`find_node`. A light client sends an empty `nodeid`: it is answered but never added to routing
tables, so short-lived clients do not pollute them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from llamanet.swarm.dht.routing import ExactRoutingTable
from llamanet.swarm.dht.rpc import MAX_TRACKED, Address, CallResult, MsgpackRPCProtocol
from llamanet.swarm.dht.storage import RecordStorage, WireEntry

log = logging.getLogger(__name__)

GET_BUDGET: Final = 7 * 1024  # bytes of records in one `get` reply (keeps datagrams ~8 KiB)
PUT_BUDGET: Final = 6 * 1024  # bytes of records in one `put` request (requests are capped at 8 KiB)
HAVE_MAX: Final = 400  # entries in a `have` set (16 bytes each)
MAX_NODES_IN_REPLY: Final = 64
RECENTLY_SEEN: Final = 10.0  # a peer heard from this recently needs no liveness ping
WELCOME_AGAIN_AFTER: Final = 600.0  # hand stored records to the same newcomer at most this often
SPAN_FRESH_FOR: Final = 10.0  # how long a stored key's neighbourhood is reused for newcomers
_HAVE_ITEM = struct.Struct(">8sQ")


def encode_have(items: Iterable[tuple[bytes, int]]) -> bytes:
    out = bytearray()
    for count, (prefix, seq) in enumerate(items):
        if count >= HAVE_MAX:
            break
        out += _HAVE_ITEM.pack(prefix, seq)
    return bytes(out)


def decode_have(blob: object) -> dict[bytes, int]:
    if not isinstance(blob, bytes) or not blob:
        return {}
    usable = len(blob) - len(blob) % _HAVE_ITEM.size
    return dict(_HAVE_ITEM.iter_unpack(blob[:usable]))


def _is_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 20


class DHTProtocol(KademliaProtocol, MsgpackRPCProtocol):
    RPC_NAMES = frozenset({"ping", "find_node", "find_value", "store", "put", "get", "stun"})

    storage: RecordStorage
    router: ExactRoutingTable

    def __init__(
        self,
        source_node: Node,
        storage: RecordStorage,
        ksize: int,
        *,
        rpc_timeout: float = 1.5,
        light: bool = False,
    ) -> None:
        KademliaProtocol.__init__(self, source_node, storage, ksize)
        MsgpackRPCProtocol.__init__(self, wait_timeout=rpc_timeout)
        self.router = ExactRoutingTable(self, ksize, source_node)
        self.ksize = ksize
        self.light = light
        self._welcomed: dict[bytes, float] = {}
        self._confirmed: dict[bytes, tuple[str, int, float]] = {}  # id -> ip, port, when
        # stored key -> (distance of the closest and of the k-th closest contact, when computed)
        self._spans: dict[bytes, tuple[int | None, int | None, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def wire_id(self) -> bytes:
        """The id we announce: empty for a light client, which must not enter routing tables."""
        return b"" if self.light else self.source_node.id

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ serving

    def _sender(self, sender: Address, nodeid: object) -> Node | None:
        """The requester as a contact (welcomed into the table), or None for a light client."""
        if not _is_id(nodeid) or nodeid == self.source_node.id:
            return None
        assert isinstance(nodeid, bytes)
        node = Node(nodeid, sender[0], sender[1])
        self.welcome_if_new(node)
        return node

    def _neighbors(self, sender: Address, key: bytes) -> list[list[Any]]:
        exclude = Node(b"\0" * 20, sender[0], sender[1])
        nearest = self.router.find_neighbors(Node(key), exclude=exclude)
        return [[node.id, node.ip, node.port] for node in nearest]

    def rpc_ping(self, sender: Address, nodeid: object) -> bytes:
        self._sender(sender, nodeid)
        own_id: bytes = self.source_node.id
        return own_id

    def rpc_find_node(self, sender: Address, nodeid: object, key: object) -> list[list[Any]] | None:
        self._sender(sender, nodeid)
        if not _is_id(key):
            return None
        assert isinstance(key, bytes)
        return self._neighbors(sender, key)

    def rpc_find_value(
        self, sender: Address, nodeid: object, key: object
    ) -> list[list[Any]] | None:
        """Never hands out a single value: lookups use `get`, which merges."""
        return self.rpc_find_node(sender, nodeid, key)

    def rpc_store(self, sender: Address, nodeid: object, key: object, value: object) -> bool:
        """Unsigned values are refused; records arrive through `put`."""
        self._sender(sender, nodeid)
        return False

    def rpc_put(self, sender: Address, nodeid: object, key: object, entries: object) -> int:
        self._sender(sender, nodeid)
        if self.light or not _is_id(key) or not isinstance(entries, list):
            return 0
        assert isinstance(key, bytes)
        return self.storage.merge(key, entries, source=f"{sender[0]}:{sender[1]}")

    def rpc_get(
        self,
        sender: Address,
        nodeid: object,
        key: object,
        have: object = b"",
        want_nodes: object = True,
    ) -> list[Any] | None:
        self._sender(sender, nodeid)
        if not _is_id(key):
            return None
        assert isinstance(key, bytes)
        entries, more = self.storage.entries(key, decode_have(have), GET_BUDGET)
        nodes = self._neighbors(sender, key) if want_nodes is not False else []
        return [nodes, entries, more]

    # ------------------------------------------------------------------ calling

    def _address(self, node: Node) -> Address:
        return (node.ip, node.port)

    async def call_ping(self, node_to_ask: Node) -> CallResult:
        address = self._address(node_to_ask)
        seen = self.last_seen.get(address)
        if seen is not None and time.monotonic() - seen < RECENTLY_SEEN:
            return (True, node_to_ask.id)  # heard from it just now: it is alive
        result = await self.call(address, "ping", self.wire_id)
        if result[0] and result[1] != node_to_ask.id:
            result = (False, None)  # another node lives at that address now
        return self.handle_call_response(result, node_to_ask)

    async def ping_address(self, address: Address) -> Node | None:
        """Ping a bare address (bootstrap); the node found there, or None."""
        self.forget_dead(address)
        ok, reply = await self.call(address, "ping", self.wire_id)
        if not ok or not _is_id(reply) or reply == self.source_node.id:
            return None
        node = Node(reply, address[0], address[1])
        self.welcome_if_new(node)
        return node

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> CallResult:
        result = await self.call(
            self._address(node_to_ask), "find_node", self.wire_id, node_to_find.id
        )
        if result[0]:
            nodes = self._read_nodes(result[1])
            result = (False, None) if nodes is None else (True, nodes)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> CallResult:
        return await self.call_get(node_to_ask, node_to_find.id, b"")

    async def call_get(
        self, node_to_ask: Node, key: bytes, have: bytes, want_nodes: bool = True
    ) -> CallResult:
        """(True, (nodes, entries, more)) or (False, None)."""
        args = (self.wire_id, key, have) if want_nodes else (self.wire_id, key, have, False)
        result = await self.call(self._address(node_to_ask), "get", *args)
        if result[0]:
            reply = result[1]
            nodes = None
            if isinstance(reply, list) and len(reply) == 3 and isinstance(reply[1], list):
                nodes = self._read_nodes(reply[0])
            if nodes is None:
                result = (False, None)
            else:
                result = (True, (nodes, reply[1], bool(reply[2])))
        return self.handle_call_response(result, node_to_ask)

    async def call_put(self, node_to_ask: Node, key: bytes, entries: list[WireEntry]) -> CallResult:
        result = await self.call(self._address(node_to_ask), "put", self.wire_id, key, entries)
        if result[0] and (isinstance(result[1], bool) or not isinstance(result[1], int)):
            result = (False, None)
        return self.handle_call_response(result, node_to_ask)

    def put_many(
        self,
        nodes: list[Node],
        key: bytes,
        entries: list[WireEntry],
        on_failure: Callable[[], None] | None = None,
    ) -> list[asyncio.Future[CallResult]]:
        """`put` to several nodes at once (plain futures, no task per call). Each reply is
        handled when it comes, so callers need not wait for a dead replica's timeout;
        `on_failure` runs for each replica that did not take the entries."""

        def handle(node: Node, future: asyncio.Future[CallResult]) -> None:
            result = future.result() if not future.cancelled() else (False, None)
            ok = result[0] and isinstance(result[1], int) and not isinstance(result[1], bool)
            self.handle_call_response(result if ok else (False, None), node)
            if not ok and on_failure is not None:
                on_failure()

        futures = []
        for node in nodes:
            future = self.call(self._address(node), "put", self.wire_id, key, entries)
            future.add_done_callback(functools.partial(handle, node))
            futures.append(future)
        return futures

    async def call_store(self, node_to_ask: Node, key: bytes, value: Any) -> CallResult:
        """The stock name, carried over `put` (values are lists of wire entries)."""
        return await self.call_put(node_to_ask, key, list(value))

    def _read_nodes(self, reply: object) -> list[Node] | None:
        if not isinstance(reply, list):
            return None
        nodes = []
        for item in reply[:MAX_NODES_IN_REPLY]:
            if (
                isinstance(item, list)
                and len(item) == 3
                and _is_id(item[0])
                and isinstance(item[1], str)
                and isinstance(item[2], int)
                and 0 < item[2] < 65536
            ):
                nodes.append(Node(item[0], item[1], item[2]))
        return nodes

    def handle_call_response(self, result: CallResult, node: Node) -> CallResult:
        """Stock semantics (drop a silent contact, welcome a responsive one) without a warning
        per timeout."""
        if result[0]:
            self.welcome_if_new(node)
        else:
            self._confirmed.pop(node.id, None)
            self._welcomed.pop(node.id, None)  # should it come back, it is a newcomer again
            self.router.remove_contact(node)
        return result

    # ------------------------------------------------------------------ newcomers

    def welcome_if_new(self, node: Node) -> None:
        """Add a new contact and hand it the records it should now hold (paper, section 2.5).

        Fixes the stock version: storage keys are already digests (it hashed them again, so it
        targeted the wrong ids); a contact that changed address is updated; a newcomer sitting in
        a full bucket's replacement list is not handed everything again on each message.
        """
        now = time.monotonic()
        confirmed = self._confirmed.get(node.id)
        if (
            confirmed is not None
            and now - confirmed[2] < RECENTLY_SEEN
            and confirmed[:2] == (node.ip, node.port)
        ):
            return  # fast path: handled moments ago (this runs on every message)
        self._confirmed.pop(node.id, None)  # least recently confirmed first: bounded below
        self._confirmed[node.id] = (node.ip, node.port, now)
        if len(self._confirmed) > MAX_TRACKED:
            del self._confirmed[next(iter(self._confirmed))]
        bucket = self.router.buckets[self.router.get_bucket_for(node)]
        known = bucket.nodes.get(node.id)
        if known is not None:
            if (known.ip, known.port) != (node.ip, node.port):
                bucket.add_node(node)  # restarted on a new port: keep the live address
            return
        self.router.add_contact(node)
        if self.light or not self.storage.data:
            return
        if node.id not in self.router.buckets[self.router.get_bucket_for(node)].nodes:
            return  # parked in a full bucket's replacement list: far from us and what we hold
        if now - self._welcomed.get(node.id, -WELCOME_AGAIN_AFTER) < WELCOME_AGAIN_AFTER:
            return
        self._welcomed[node.id] = now
        keys = self._keys_for_newcomer(node, now)
        if keys:
            self._spawn(self._hand_over(node, keys))

    def _keys_for_newcomer(self, node: Node, now: float) -> list[bytes]:
        """Stored keys for which `node` is among the k closest and we are the closest holder."""
        keys = []
        for key in list(self.storage.data):
            span = self._spans.get(key)
            if span is None or now - span[2] > SPAN_FRESH_FOR:
                keynode = Node(key)
                neighbors = self.router.find_neighbors(keynode, exclude=node)
                full = len(neighbors) >= self.ksize
                span = (
                    neighbors[0].distance_to(keynode) if neighbors else None,
                    neighbors[-1].distance_to(keynode) if full else None,
                    now,
                )
                self._spans[key] = span
            closest, farthest, _ = span
            target = int.from_bytes(key, "big")
            if farthest is not None and node.long_id ^ target >= farthest:
                continue  # the newcomer is not among the k closest
            if closest is not None and self.source_node.long_id ^ target > closest:
                continue  # a closer holder will hand it over
            keys.append(key)
        return keys

    async def _hand_over(self, node: Node, keys: list[bytes]) -> None:
        for key in keys:
            entries, _ = self.storage.entries(key)
            batch: list[WireEntry] = []
            size = 0
            for entry in entries:
                if batch and size + len(entry[0]) > PUT_BUDGET:
                    if not (await self.call_put(node, key, batch))[0]:
                        return
                    batch, size = [], 0
                batch.append(entry)
                size += len(entry[0]) + 16
            if batch and not (await self.call_put(node, key, batch))[0]:
                return

    def prune(self, horizon: float = 3600.0) -> None:
        super().prune(horizon)
        cutoff = time.monotonic() - WELCOME_AGAIN_AFTER
        for node_id in [n for n, at in self._welcomed.items() if at < cutoff]:
            del self._welcomed[node_id]
        cutoff = time.monotonic() - RECENTLY_SEEN
        for node_id in [n for n, c in self._confirmed.items() if c[2] < cutoff]:
            del self._confirmed[node_id]
        for key in [k for k in self._spans if k not in self.storage.data]:
            del self._spans[key]
