"""How a client learns the swarm: node URLs (`GET /nodes`) and/or the DHT as a light client,
refreshed in the background, plus round-trip probes that feed the router.

A node that does not answer its probe (`GET /health`) is cooled down like a node that failed a
request: an unanswered probe is the surest sign of a frozen or vanished node, and it must never
look like the fastest one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import httpx

from llamanet.client._cache import RecordCache
from llamanet.protocol import NODE_HEADER, NodeList, NodeRecord
from llamanet.swarm.addresses import is_loopback, parse_hostport
from llamanet.swarm.selector import NodeSelector

__all__ = ["Discovery", "normalize_url"]

log = logging.getLogger(__name__)

DEFAULT_NODE_URL: Final = "http://127.0.0.1:8000"
DISCOVERY_TIMEOUT: Final = 10.0  # a `/nodes` answer may wait on a DHT lookup
RTT_PROBES_PER_REFRESH: Final = 8
RTT_PROBE_INTERVAL: Final = 30.0


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class Discovery:
    """The records one client knows and where it gets them.

    `nodes` are node URLs to ask (`GET /nodes`); `bootstrap` are DHT peers (`host:port`) to
    join as a light client. With neither, `http://127.0.0.1:8000` is used.
    """

    def __init__(
        self,
        selector: NodeSelector,
        *,
        nodes: Sequence[str] = (),
        bootstrap: Sequence[str] = (),
        connect_timeout: float = 3.0,
        refresh_interval: float = 5.0,
    ) -> None:
        self.selector = selector
        self.bootstrap = [parse_hostport(b) for b in bootstrap]
        self.seed_urls = [normalize_url(u) for u in nodes]
        if not self.seed_urls and not self.bootstrap:
            self.seed_urls = [DEFAULT_NODE_URL]
        self.connect_timeout = connect_timeout
        self.refresh_interval = refresh_interval
        self.records = RecordCache()
        self.http: httpx.AsyncClient | None = None
        self._dht: Any = None
        self._url_override: dict[str, str] = {}
        self._rtt_probed: dict[str, float] = {}
        self._refreshing: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, http: httpx.AsyncClient) -> None:
        """Join the DHT if asked, then one discovery round."""
        self.http = http
        if self.bootstrap:
            await self._start_dht()
        await self.refresh()

    async def stop(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        self._refreshing = None
        if self._dht is not None:
            dht, self._dht = self._dht, None
            try:
                await dht.stop()
            except Exception as exc:
                log.debug("stopping the DHT client failed: %r", exc)

    async def _start_dht(self) -> None:
        from llamanet.swarm.dht import DHTNode  # kademlia: loaded only by DHT clients

        host = "127.0.0.1" if all(is_loopback(h) for h, _ in self.bootstrap) else "0.0.0.0"
        dht = DHTNode(identity=None)
        await dht.start(host, 0)
        self._dht = dht
        await dht.bootstrap(self.bootstrap)

    # ------------------------------------------------------------------ discovery rounds

    async def refresh(self) -> None:
        """One discovery round now (concurrent callers share it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._discover())
        await asyncio.shield(self._refreshing)

    async def run(self) -> None:
        """The background loop: probe round trips, wait, refresh; forever."""
        while True:
            try:
                await self.probe_rtts()
            except Exception as exc:
                log.debug("rtt probes failed: %r", exc)
            await asyncio.sleep(self.refresh_delay())
            try:
                await self.refresh()
            except Exception as exc:  # discovery is best effort; keep the records we have
                log.warning("node discovery failed: %s", exc)

    def refresh_delay(self) -> float:
        """`refresh_interval`, shortened so records are renewed before their ttl runs out."""
        ttls = [r.ttl for r in self.records.live() if r.ttl > 0]
        return max(0.2, min([self.refresh_interval, *(t / 2 for t in ttls)]))

    async def _discover(self) -> None:
        sources = [self._from_url(url) for url in self.seed_urls]
        if self._dht is not None:
            sources.append(self._from_dht())
        for found in await asyncio.gather(*sources, return_exceptions=True):
            if isinstance(found, BaseException):
                log.debug("a discovery source failed: %r", found)
            else:
                self.records.merge(found)

    async def _from_url(self, url: str) -> list[NodeRecord]:
        assert self.http is not None
        timeout = httpx.Timeout(DISCOVERY_TIMEOUT, connect=self.connect_timeout)
        response = await self.http.get(f"{url}/nodes", timeout=timeout)
        response.raise_for_status()
        served_by = response.headers.get(NODE_HEADER)
        if served_by:  # the URL we were given reaches this node, whatever its record says
            self._url_override[served_by] = url
        return NodeList.model_validate(response.json()).nodes

    async def _from_dht(self) -> list[NodeRecord]:
        found: list[NodeRecord] = await self._dht.find_nodes(model=None)
        if not found and self.bootstrap:
            await self._dht.bootstrap(self.bootstrap)  # the first join may have failed
            found = await self._dht.find_nodes(model=None)
        return found

    # ------------------------------------------------------------------ probes

    async def probe_rtts(self) -> None:
        """Measure round trips (`GET /health`) to a few nodes not measured lately."""
        now = time.monotonic()
        due = [
            r
            for r in self.records.active()
            if now - self._rtt_probed.get(r.node_id, -RTT_PROBE_INTERVAL) >= RTT_PROBE_INTERVAL
        ]
        due.sort(key=lambda r: self._rtt_probed.get(r.node_id, -1.0))
        await asyncio.gather(*(self._probe(r) for r in due[:RTT_PROBES_PER_REFRESH]))

    async def _probe(self, record: NodeRecord) -> None:
        self._rtt_probed[record.node_id] = time.monotonic()
        started = time.perf_counter()
        if not await self.alive(record, self.connect_timeout):
            seconds = self.selector.mark_failed(record.node_id, started_at=record.started_at)
            log.warning(
                "node %s did not answer its probe; cooling down %.0fs", record.node_id[:12], seconds
            )
            return
        self.selector.record_rtt(record.node_id, time.perf_counter() - started)

    async def alive(self, record: NodeRecord, timeout: float) -> bool:
        """Whether the node answers `GET /health` at all within `timeout` (any status: a node
        that answers is alive, whether or not it can serve)."""
        assert self.http is not None
        probe = self.http.get(f"{self.url_of(record)}/health", timeout=httpx.Timeout(timeout))
        try:
            await asyncio.wait_for(probe, timeout)
        except (httpx.HTTPError, TimeoutError):
            return False
        return True

    # ------------------------------------------------------------------ naming

    def sources(self) -> str:
        """Where this client discovers nodes, for messages."""
        urls = [f"{u}/nodes" for u in self.seed_urls]
        peers = [f"DHT peer {h}:{p}" for h, p in self.bootstrap]
        return ", ".join(urls + peers)

    def url_of(self, record: NodeRecord) -> str:
        """The base URL to reach a node."""
        return self._url_override.get(record.node_id) or normalize_url(record.url)
