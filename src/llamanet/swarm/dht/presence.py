"""`Presence`: the heartbeat a node runs to stay visible in the DHT.

Every heartbeat it signs a fresh record (seq + 1, ttl = 3 heartbeats) from `describe()` and
publishes it; on stop it publishes a tombstone so lookups drop the node at once. `seq` starts
from the wall clock in milliseconds, so a restarted node's records supersede its old ones (an
incarnation issues far fewer than one record per millisecond; should the clock have gone back,
the old records are forgotten within their ttl anyway).

`start()` makes one join attempt (bounded by about 2 * rpc_timeout) through the bootstrap peers
and the peers this node knew before it restarted (`KnownPeers`, a file in its home), so the first
record reaches the swarm at once; after that, whenever the routing table is empty, it keeps
retrying both in the background with capped exponential backoff. The contacts it has are saved
every heartbeat, so even the first node of a swarm (started without bootstrap peers) finds its
way back after a restart. Nothing here ever raises into the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from llamanet.protocol import NodeRecord
from llamanet.swarm.dht.known_peers import KnownPeers
from llamanet.swarm.dht.network import DHTNode
from llamanet.swarm.dht.rpc import Address
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import make_tombstone, sign_record

log = logging.getLogger(__name__)

BACKOFF_START: Final = 1.0
BACKOFF_MAX: Final = 30.0
_SIGNED_HERE: Final = frozenset(
    {"node_id", "public_key", "seq", "issued_at", "ttl", "withdrawn", "signature"}
)


class Presence:
    def __init__(
        self,
        dht: DHTNode,
        identity: NodeIdentity,
        describe: Callable[[], dict[str, Any]],
        *,
        heartbeat: float = 10.0,
        bootstrap: Sequence[tuple[str, int]] = (),
        peers_file: Path | None = None,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        self.dht = dht
        self.identity = identity
        self.describe = describe
        self.heartbeat = heartbeat
        self.bootstrap_peers = [(str(host), int(port)) for host, port in bootstrap]
        self.known = KnownPeers(peers_file)
        self.seq = 0
        self.record: NodeRecord | None = None
        self.last_heartbeat: float | None = None
        self.bootstrap_state = "pending" if self.bootstrap_peers else "none"
        self.bootstrap_attempts = 0
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ttl(self) -> float:
        return 3 * self.heartbeat

    async def start(self) -> None:
        """One bounded bootstrap attempt (if needed), the first publish, then the loops."""
        if self._tasks:
            return
        await self.known.load()
        if self._join_targets() and self.bootstrap_state == "none":
            self.bootstrap_state = "pending"
        if self._needs_bootstrap():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._try_bootstrap(), 2 * self.dht.rpc_timeout + 1)
        await self.beat()
        self._tasks = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._stay_joined()),
        ]

    async def stop(self) -> None:
        """Stop the loops and publish a tombstone (bounded in time, never raises)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._save_contacts()
        async with self._lock:
            if self.record is None or self.record.withdrawn:
                return
            try:
                tombstone = make_tombstone(self.identity, self.record, ttl=self.ttl)
                await asyncio.wait_for(self.dht.withdraw(tombstone), 2 * self.dht.rpc_timeout + 1)
                self.record, self.seq = tombstone, tombstone.seq
            except Exception as exc:
                log.warning("could not publish the tombstone: %r", exc)

    async def beat(self) -> None:
        """Sign and publish a fresh record now."""
        async with self._lock:
            try:
                fields = {k: v for k, v in self.describe().items() if k not in _SIGNED_HERE}
                seq = self.seq + 1 if self.seq else int(time.time() * 1000)
                record = sign_record(self.identity, **fields, seq=seq, ttl=self.ttl)
                self.seq = seq
                await self.dht.publish(record)
            except Exception as exc:
                self.last_error = repr(exc)
                log.warning("heartbeat failed: %r", exc)
                return
            self.record = record
            self.last_heartbeat = time.time()
            self.last_error = None

    async def _heartbeats(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += self.heartbeat
            delay = deadline - time.monotonic()
            if delay < 0:  # fell behind (a slow publish): skip ahead instead of bursting
                deadline, delay = time.monotonic() + self.heartbeat, self.heartbeat
            await asyncio.sleep(delay)
            await self.beat()
            await self._save_contacts()

    async def _save_contacts(self) -> None:
        try:
            await self.known.remember(self.dht.contacts())
        except Exception as exc:  # best effort: it only speeds up a restart
            log.debug("could not remember the contacts: %r", exc)

    def _join_targets(self) -> list[Address]:
        """Bootstrap peers first, then the peers known from before (own address left out)."""
        own = {self.dht.address, ("127.0.0.1", self.dht.port)}
        targets = [*self.bootstrap_peers, *self.known.peers]
        return [addr for addr in dict.fromkeys(targets) if addr not in own]

    def _needs_bootstrap(self) -> bool:
        return bool(self._join_targets()) and self.dht.status()["routing_table_size"] == 0

    async def _try_bootstrap(self) -> bool:
        self.bootstrap_attempts += 1
        targets = self._join_targets()
        try:
            known = await self.dht.bootstrap(targets)
        except Exception as exc:  # bootstrap() should not raise; be safe anyway
            known = 0
            self.last_error = repr(exc)
        self.bootstrap_state = "joined" if known else "retrying"
        if not known:
            names = ", ".join(f"{host}:{port}" for host, port in targets)
            log.info("joining through %s found no peer; retrying", names)
        return known > 0

    async def _stay_joined(self) -> None:
        """Re-bootstrap whenever the routing table is empty (first join, or everyone left)."""
        backoff = BACKOFF_START
        while True:
            if not self._needs_bootstrap():
                backoff = BACKOFF_START
                if self.dht.status()["routing_table_size"]:
                    self.bootstrap_state = "joined"  # (also when joined some other way)
                await asyncio.sleep(min(self.heartbeat, 5.0))
                continue
            if await self._try_bootstrap():
                backoff = BACKOFF_START
                await self.beat()  # become visible now rather than at the next heartbeat
                continue
            await asyncio.sleep(backoff * random.uniform(1.0, 1.25))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _peer_names(self) -> list[str]:
        return [f"{host}:{port}" for host, port in self.bootstrap_peers]

    def status(self) -> dict[str, Any]:
        return {
            **self.dht.status(),
            "heartbeat": self.heartbeat,
            "seq": self.seq,
            "last_heartbeat": self.last_heartbeat,
            "bootstrap": self._peer_names(),
            "known_peers": [f"{host}:{port}" for host, port in self.known.peers],
            "bootstrap_state": self.bootstrap_state,
            "bootstrap_attempts": self.bootstrap_attempts,
            "last_error": self.last_error,
        }
