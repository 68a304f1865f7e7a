"""Any node is a door to the swarm: requests it cannot serve go to the best peer, relayed as is.

The peer is chosen by the one `NodeSelector` (the client library's router) over records kept
fresh in the background, so the request path never waits on a DHT lookup unless the cache has no
candidate at all. Responses (streams included) are relayed chunk by chunk as they arrive; a
client that goes away closes the upstream connection, so the peer stops generating too. A
forwarded request carries `X-LlamaNet-Forwarded-By` and is never forwarded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from fastapi import Request
from fastapi.responses import StreamingResponse

from llamanet.node.disconnect import unless_disconnected
from llamanet.node.errors import APIError, capability_not_served, model_not_found
from llamanet.protocol import NodeRecord
from llamanet.swarm.membership import FORWARDED_HEADER, SWARM_AUTH_HEADER, swarm_proof
from llamanet.swarm.selector import NodeSelector, offers

log = logging.getLogger(__name__)

_PASS_REQUEST = ("content-type", "accept")  # the user's API key is for this node, not its peers
_PASS_RESPONSE = ("content-type", "retry-after", "x-llamanet-node", "cache-control")
MAX_ATTEMPTS = 3


def is_forwarded(request: Request) -> bool:
    return FORWARDED_HEADER.lower() in request.headers


class Gateway:
    """Picks peers for requests this node will not serve itself and proxies them."""

    def __init__(
        self,
        *,
        node_id: str,
        find_nodes: Callable[[], Awaitable[list[NodeRecord]]],
        swarm_key: str | None,
        heartbeat: float,
        request_timeout: float,
        on_forwarded: Callable[[], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.find_nodes = find_nodes
        self.swarm_key = swarm_key
        self.on_forwarded = on_forwarded
        self.selector = NodeSelector()
        # twice per heartbeat: a record (ttl = 3 heartbeats) is never missed, lookups stay rare
        self.refresh_interval = max(0.5, heartbeat / 2)
        self.records: list[NodeRecord] = []
        self.refreshed_at = 0.0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=3.0, read=request_timeout, write=30.0, pool=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ peer records

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="gateway-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)

    async def refresh(self) -> list[NodeRecord]:
        self.records = await self.find_nodes()
        self.refreshed_at = time.monotonic()
        return self.records

    def recent(self) -> list[NodeRecord] | None:
        """The cached records if the last refresh is recent enough to answer from."""
        fresh = time.monotonic() - self.refreshed_at <= 2 * self.refresh_interval
        return self.records if fresh and self.records else None

    def peers(self) -> list[NodeRecord]:
        return [r for r in self.records if r.node_id != self.node_id and not r.withdrawn]

    def swarm_models(self) -> dict[str, tuple[int, int | None]]:
        """model id -> (number of nodes serving it, smallest n_ctx), over live records."""
        out: dict[str, tuple[int, int | None]] = {}
        for record in self.records:
            for model in record.models:
                count, n_ctx = out.get(model.id, (0, None))
                out[model.id] = (count + 1, min(n_ctx or model.n_ctx, model.n_ctx))
        return out

    async def _candidates(
        self,
        model: str | None,
        prompt_tokens: int,
        max_tokens: int,
        tried: set[str],
        capability: str | None = None,
    ) -> list[NodeRecord]:
        exclude = {self.node_id, *tried}
        ranked = self.selector.rank(
            self.peers(),
            model=model,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            exclude=exclude,
            capability=capability,
        )
        if not ranked and not tried:  # the cache may be stale: look once more, on demand
            await self.refresh()
            ranked = self.selector.rank(
                self.peers(),
                model=model,
                prompt_tokens=prompt_tokens,
                max_tokens=max_tokens,
                exclude=exclude,
                capability=capability,
            )
        return ranked

    # ------------------------------------------------------------------ proxying

    async def forward(
        self,
        request: Request,
        model: str | None,
        *,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        reason: str = "",
        capability: str | None = None,
    ) -> StreamingResponse:
        """Sends the request to the best peer, failing over before the first byte; with a
        `capability` (e.g. "embeddings"), only to peers whose record advertises it."""
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASS_REQUEST}
        headers[FORWARDED_HEADER] = self.node_id
        if self.swarm_key:
            headers[SWARM_AUTH_HEADER] = swarm_proof(self.swarm_key, self.node_id)
        tried: set[str] = set()
        last_error: APIError | None = None
        for _ in range(MAX_ATTEMPTS):
            ranked = await self._candidates(model, prompt_tokens, max_tokens, tried, capability)
            if not ranked:
                break
            peer = ranked[0]
            tried.add(peer.node_id)
            try:
                return await self._relay(request, peer, body, headers, reason)
            except _PeerFailed as exc:
                last_error = exc.error
        if last_error is not None:
            raise last_error
        if model is not None and model not in self.swarm_models():
            raise model_not_found(model, sorted(self.swarm_models()))
        if capability is not None and not any(offers(r, model, capability) for r in self.peers()):
            raise capability_not_served(capability, model)
        raise APIError(
            503,
            "No node in the swarm can take this request right now.",
            code="no_capacity",
            headers={"Retry-After": "2"},
        )

    async def _relay(
        self, request: Request, peer: NodeRecord, body: bytes, headers: dict[str, str], reason: str
    ) -> StreamingResponse:
        url = peer.url.rstrip("/") + request.url.path
        upstream_request = self._http.build_request("POST", url, content=body, headers=headers)
        started = time.perf_counter()
        in_flight = contextlib.ExitStack()  # counts the request against the peer until it ends
        in_flight.enter_context(self.selector.track(peer.node_id))
        try:
            # the peer's response head, as long as our own client stays
            upstream = await unless_disconnected(
                request, self._http.send(upstream_request, stream=True)
            )
        except httpx.HTTPError as exc:
            in_flight.close()
            self.selector.mark_failed(peer.node_id)
            log.warning("peer %s failed before answering: %s", peer.node_id[:12], exc)
            raise _PeerFailed(
                APIError(
                    502, f"Peer node {peer.node_id[:12]} failed: {exc}", code="peer_unreachable"
                )
            ) from exc
        except BaseException:
            in_flight.close()
            raise
        if upstream.status_code >= 500:
            await upstream.aclose()
            in_flight.close()
            retry_after = upstream.headers.get("retry-after")
            if upstream.status_code != 503:  # a full queue is busy, not broken: no cooldown
                self.selector.mark_failed(
                    peer.node_id,
                    retry_after=float(retry_after)
                    if retry_after and retry_after.isdigit()
                    else None,
                )
            raise _PeerFailed(
                APIError(
                    upstream.status_code,
                    f"Peer node {peer.node_id[:12]} answered {upstream.status_code}.",
                    code="peer_error",
                    headers={"Retry-After": retry_after or "1"},
                )
            )
        self.selector.mark_ok(peer.node_id)
        self.selector.record_rtt(peer.node_id, time.perf_counter() - started)
        if self.on_forwarded is not None:
            self.on_forwarded()
        request.state.served_by = peer.node_id[:12]
        log.info("forwarding %s to %s (%s)", request.url.path, peer.node_id[:12], reason)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_RESPONSE}
        return StreamingResponse(
            _relay_body(upstream, in_flight), status_code=upstream.status_code, headers=out_headers
        )


class _PeerFailed(Exception):
    def __init__(self, error: APIError) -> None:
        super().__init__(error.detail.message)
        self.error = error


async def _relay_body(
    upstream: httpx.Response,
    in_flight: contextlib.ExitStack,
) -> AsyncIterator[bytes]:
    """Relays the peer's bytes as they arrive; closing it (client gone) closes the upstream."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        in_flight.close()
        await upstream.aclose()
