"""Any node is a door to the swarm: requests it cannot serve go to the best peer, relayed as is.

The peer is chosen by the one `NodeSelector` (the client library's router) over records kept
fresh in the background, so the request path never waits on a DHT lookup unless the cache has no
candidate at all; a tombstone the DHT receives drops its node from the cache at once
(`withdrawn`). What a failed peer means is decided by the swarm's one failover policy
(`llamanet.swarm.failover`), the same as in `LlamaNetClient`: a busy peer is skipped, a broken
one cooled down, a caller error relayed as is.

A peer gets `first_byte_timeout` seconds to send its response head; past that, a liveness probe
(`GET /health`) tells a busy peer (keep waiting, up to `request_timeout`) from a frozen one (next
peer, cooldown). Responses (streams included) are relayed as they arrive, streams event by event.

A generation stream is *resumable*: the gateway asks the peer for the token ids of each chunk
(an internal field it strips before relaying, `llamanet.swarm.resume`); when the peer breaks
off, ends early, or sends nothing, keep-alives included, for `stall_timeout` seconds, it is
cooled down at once and the same failover policy picks a peer with the same model fingerprint,
which continues the stream from the ids delivered (same id, no second role chunk, one finish,
usage counting every token, `[DONE]` once; the finish chunk names the nodes that served it; a
tool-call stream also says how many of its text and call chunks went through, so its calls go
on exactly where they were cut).
Only when none can take over does the stream end with one `data: {"error": ...}` event,
counted as a 502. A client that goes away closes the upstream connection, so the peer stops
generating too.
A forwarded request carries `X-LlamaNet-Forwarded-By` and is never forwarded again.

When the node stops, `drain` gives the streams it relays the node's shutdown grace to finish,
then ends each with a `shutting_down` error event (the code a stopping node's own streams end
with), instead of leaving uvicorn to cut the connection mid-event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import format_sse_event

from llamanet.node.disconnect import unless_disconnected
from llamanet.node.errors import APIError, capability_not_served, model_not_found
from llamanet.node.read_ahead import SILENT, STOPPED, read_ahead
from llamanet.protocol import NodeRecord
from llamanet.swarm.failover import (
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    Failover,
    Verdict,
    estimate_request_tokens,
    judge_status,
    model_identity,
    swarm_models,
    wait_for_answer,
)
from llamanet.swarm.membership import FORWARDED_HEADER, SWARM_AUTH_HEADER, swarm_proof
from llamanet.swarm.resume import (
    StreamTranscript,
    UpstreamError,
    asking_token_ids,
    can_resume,
    resume_body,
)
from llamanet.swarm.selector import NodeSelector, offers

__all__ = ["Gateway", "is_forwarded"]

log = logging.getLogger(__name__)

_PASS_REQUEST: Final = ("content-type", "accept")  # the user's API key is for this node only
_PASS_RESPONSE: Final = ("content-type", "retry-after", "x-llamanet-node", "cache-control")
MAX_ATTEMPTS: Final = 3
MODEL_MEMORY: Final = 600.0  # a model seen this recently is "temporarily unavailable", not unknown
WITHDRAWN_MEMORY: Final = 300.0  # how long a tombstone keeps older records of its node out
MAX_WITHDRAWN: Final = 10_000
DONE: Final = format_sse_event(data_str="[DONE]")
_EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def is_forwarded(request: Request) -> bool:
    return FORWARDED_HEADER.lower() in request.headers


class Gateway:
    """Picks peers for requests this node will not serve itself and proxies them.

    `find_nodes()` returns the live records of the swarm (this node's own included);
    `on_forwarded()` is called once per request a peer accepted. `transport` replaces httpx's
    network transport (in-process tests with scripted peers).
    """

    def __init__(
        self,
        *,
        node_id: str,
        find_nodes: Callable[[], Awaitable[list[NodeRecord]]],
        swarm_key: str | None,
        heartbeat: float,
        request_timeout: float,
        on_forwarded: Callable[[], None] | None = None,
        first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        refresh_interval: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.node_id = node_id
        self.find_nodes = find_nodes
        self.swarm_key = swarm_key
        self.on_forwarded = on_forwarded or (lambda: None)
        self.first_byte_timeout = first_byte_timeout
        self.stall_timeout = stall_timeout
        self.selector = NodeSelector()
        # twice per heartbeat: a record (ttl = 3 heartbeats) is never missed, lookups stay rare
        self.refresh_interval = refresh_interval or max(0.5, heartbeat / 2)
        self.records: list[NodeRecord] = []
        self.refreshed_at = 0.0
        self._withdrawn: dict[str, tuple[int, float]] = {}  # node id -> (tombstone seq, until)
        self._models_seen: dict[str, float] = {}  # model id -> monotonic time last seen live
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=3.0, read=request_timeout, write=30.0, pool=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            transport=transport,  # tests: scripted peers
        )
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._relays: set[_Relay] = set()  # event streams being relayed
        self.stopping = asyncio.Event()  # set by `drain`: relayed streams end now

    # ------------------------------------------------------------------ peer records

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="gateway-refresh")

    async def drain(self, grace: float) -> None:
        """The start of a shutdown: the streams being relayed get `grace` seconds to finish,
        then each ends with a `shutting_down` error event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._relays:
            log.info(
                "shutting down: %d relayed stream(s) get %g s to finish", len(self._relays), grace
            )
        while self._relays and loop.time() < deadline:  # noqa: ASYNC110 - polled, once, briefly
            await asyncio.sleep(0.05)
        if self._relays:
            log.info("shutting down: ending %d relayed stream(s)", len(self._relays))
        self.stopping.set()

    async def close(self) -> None:
        for task in [self._task, *self._probes]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._http.aclose()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a failed lookup keeps the records we have
                log.warning("peer lookup failed: %r", exc)
            await asyncio.sleep(self.refresh_interval)

    async def refresh(self) -> list[NodeRecord]:
        found = await self.find_nodes()
        now = time.monotonic()
        for node_id in [n for n, (_, until) in self._withdrawn.items() if until <= now]:
            del self._withdrawn[node_id]
        # a lookup that began before a tombstone arrived must not bring its node back
        self.records = [r for r in found if not self._superseded(r)]
        self.refreshed_at = now
        for card in swarm_models(self.records):
            self._models_seen[card.id] = now
        return self.records

    def _superseded(self, record: NodeRecord) -> bool:
        gone = self._withdrawn.get(record.node_id)
        return record.withdrawn or (gone is not None and record.seq <= gone[0])

    def withdrawn(self, tombstone: NodeRecord) -> None:
        """A node left (its tombstone reached this node's DHT storage): stop listing and routing
        to it now rather than at the next refresh."""
        held = self._withdrawn.get(tombstone.node_id)
        if held is None or tombstone.seq > held[0]:
            until = time.monotonic() + max(WITHDRAWN_MEMORY, tombstone.ttl)
            self._withdrawn.pop(tombstone.node_id, None)  # oldest first: bounded below
            self._withdrawn[tombstone.node_id] = (tombstone.seq, until)
            if len(self._withdrawn) > MAX_WITHDRAWN:
                del self._withdrawn[next(iter(self._withdrawn))]
        before = len(self.records)
        self.records = [r for r in self.records if not self._superseded(r)]
        if len(self.records) != before:
            log.info("node %s left the swarm", tombstone.node_id[:12])

    def recent(self) -> list[NodeRecord] | None:
        """The cached records if the last refresh is recent enough to answer from."""
        fresh = time.monotonic() - self.refreshed_at <= 2 * self.refresh_interval
        return self.records if fresh and self.records else None

    def peers(self) -> list[NodeRecord]:
        return [r for r in self.records if r.node_id != self.node_id and not r.withdrawn]

    def swarm_models(self) -> dict[str, tuple[int, int | None]]:
        """model id -> (number of nodes serving it, largest n_ctx), over live records (the one
        model list: `llamanet.swarm.failover.swarm_models`)."""
        return {card.id: (card.nodes, card.n_ctx) for card in swarm_models(self.records)}

    def seen_recently(self, model: str) -> bool:
        """Whether `model` was served in the swarm within `MODEL_MEMORY` seconds."""
        seen = self._models_seen.get(model)
        if seen is None:
            return False
        if time.monotonic() - seen > MODEL_MEMORY:
            del self._models_seen[model]
            return False
        return True

    # ------------------------------------------------------------------ proxying

    async def forward(
        self,
        request: Request,
        model: str | None,
        *,
        prompt_tokens: int | None = None,
        max_tokens: int = 0,
        reason: str = "",
        capability: str | None = None,
    ) -> Response:
        """Sends the request to the best peer, failing over before the first byte; with a
        `capability` (e.g. "embeddings"), only to peers whose record advertises it.

        `prompt_tokens` None: estimated from the body, as the client library estimates it.
        """
        body = await request.body()
        if prompt_tokens is None:
            prompt_tokens = _estimate(body)
        payload = _json_object(body)
        resumable = payload is not None and can_resume(request.url.path, payload)
        caller_asked = False
        if payload is not None and resumable:
            asked, caller_asked = asking_token_ids(payload)
            body = json.dumps(asked, separators=(",", ":")).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASS_REQUEST}
        headers[FORWARDED_HEADER] = self.node_id
        if self.swarm_key:
            headers[SWARM_AUTH_HEADER] = swarm_proof(self.swarm_key, self.node_id)
        failover: Failover[APIError] = Failover(
            self.selector,
            records=self.peers,
            refresh=self.refresh,
            model=model,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            attempts=MAX_ATTEMPTS,
            exclude={self.node_id},
            capability=capability,
        )
        while (peer := await failover.next_node()) is not None:
            resume = None
            if payload is not None and resumable:
                resume = _Resume(failover, payload, headers, peer, strip=not caller_asked)
            try:
                response = await self._relay(request, peer, body, headers, reason, resume)
            except _PeerFailed as exc:
                seconds = failover.failed(peer, exc.verdict, exc.error, retry_after=exc.retry_after)
                cooling = f"; cooling down {seconds:.0f}s" if seconds else ""
                log.warning("%s%s", exc.error.detail.message, cooling)
                continue
            failover.succeeded(peer)
            return response
        raise self._exhausted(failover, model, capability)

    def _exhausted(
        self, failover: Failover[APIError], model: str | None, capability: str | None = None
    ) -> APIError:
        if failover.failures:
            if failover.all_busy:
                wait = failover.retry_after()
                return _no_capacity("Every node that serves the model is busy", wait)
            error = failover.failures[-1].failure
            error.headers.setdefault("Retry-After", _seconds(failover.retry_after()))
            return error
        if model is not None and model not in self.swarm_models():
            if not self.seen_recently(model):
                return model_not_found(model, sorted(self.swarm_models()))
            return _no_capacity(f"No node serving '{model}' is reachable right now", 5.0)
        if capability is not None and not any(offers(r, model, capability) for r in self.peers()):
            return capability_not_served(capability, model)
        cooling = [self.selector.cooldown_remaining(r.node_id) for r in failover.cooling()]
        wait = min(cooling) if cooling else 2.0
        return _no_capacity("No node in the swarm can take this request right now", wait)

    async def _relay(
        self,
        request: Request,
        peer: NodeRecord,
        body: bytes,
        headers: dict[str, str],
        reason: str,
        resume: _Resume | None = None,
    ) -> Response:
        url = peer.url.rstrip("/") + request.url.path
        upstream_request = self._http.build_request("POST", url, content=body, headers=headers)
        started = time.perf_counter()
        in_flight = contextlib.ExitStack()  # counts the request against the peer until it ends
        in_flight.enter_context(self.selector.track(peer.node_id))
        try:
            upstream = await self._response_head(request, peer, upstream_request)
        except BaseException:
            in_flight.close()
            raise
        if upstream.status_code >= 400:
            try:
                # a 5xx is judged by its status and Retry-After alone, and its connection is
                # dropped unread: after a burst of 503s, idle pooled connections would linger
                if upstream.status_code < 500:
                    await upstream.aread()
            except httpx.HTTPError as exc:
                raise _PeerFailed.broken(peer, f"failed while answering: {exc}") from exc
            finally:
                await upstream.aclose()
                in_flight.close()
            return self._error_answer(peer, upstream)
        relay = _Relay(self, request, peer, upstream, in_flight, resume)
        if relay.events:  # a stream's head comes on admission; a JSON answer's only at its end
            self.selector.record_rtt(peer.node_id, time.perf_counter() - started)
        self.on_forwarded()
        request.state.served_by = peer.node_id[:12]
        log.info("forwarding %s to %s (%s)", request.url.path, peer.node_id[:12], reason)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_RESPONSE}
        return StreamingResponse(
            relay.body(), status_code=upstream.status_code, headers=out_headers
        )

    async def _response_head(
        self, request: Request, peer: NodeRecord, outgoing: httpx.Request
    ) -> httpx.Response:
        """The peer's response head, as long as our own client stays and the peer is alive."""
        answer = wait_for_answer(
            self._http.send(outgoing, stream=True),
            first_byte_timeout=self.first_byte_timeout,
            alive=lambda: self._alive(peer),
        )
        try:
            return await unless_disconnected(request, answer)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise _PeerFailed.broken(peer, f"failed before answering: {_describe(exc)}") from exc
        except APIError as exc:
            if exc.status == 499:  # the user gave up while the peer kept silent: was it alive?
                self._check_later(peer)
            raise

    def _error_answer(self, peer: NodeRecord, upstream: httpx.Response) -> Response:
        """A peer's error answer: relayed as is when it is the caller's error, else failover."""
        retry_after = _retry_after(upstream)
        detail = _error_fields(upstream.content) if upstream.is_stream_consumed else {}
        verdict = judge_status(
            upstream.status_code,
            error_type=detail.get("type"),
            error_code=detail.get("code"),
            retry_after=retry_after,
        )
        if verdict is Verdict.RAISE:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_RESPONSE}
            return Response(upstream.content, upstream.status_code, headers=out_headers)
        raise _PeerFailed(
            APIError(
                upstream.status_code if upstream.status_code >= 500 else 503,
                f"Peer node {peer.node_id[:12]} answered {upstream.status_code}"
                + (f" ({detail['code']})" if detail.get("code") else "")
                + ".",
                code="peer_busy" if verdict is Verdict.SKIP else "peer_error",
                headers={"Retry-After": _seconds(retry_after or 1.0)},
            ),
            verdict,
            retry_after,
        )

    async def _alive(self, peer: NodeRecord) -> bool:
        """Whether the peer answers `GET /health` at all within the first-byte deadline."""
        probe = self._http.get(
            peer.url.rstrip("/") + "/health",
            timeout=httpx.Timeout(self.first_byte_timeout),
            headers={"Connection": "close"},  # a probe's connection is not kept in the pool
        )
        try:
            await asyncio.wait_for(probe, self.first_byte_timeout)
        except (httpx.HTTPError, TimeoutError):
            return False
        return True

    def _check_later(self, peer: NodeRecord) -> None:
        """Probe a peer in the background; cool it down if it does not answer."""

        async def check() -> None:
            if not await self._alive(peer):
                self.mark_failed(peer, "did not answer while a user waited")

        task = asyncio.create_task(check())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def mark_failed(self, peer: NodeRecord, why: str) -> None:
        seconds = self.selector.mark_failed(peer.node_id, started_at=peer.started_at)
        log.warning("peer %s %s; cooling down %.0fs", peer.node_id[:12], why, seconds)


class _PeerFailed(Exception):
    """A peer could not take the request; `verdict` says whether it cools down."""

    def __init__(self, error: APIError, verdict: Verdict, retry_after: float | None = None) -> None:
        super().__init__(error.detail.message)
        self.error = error
        self.verdict = verdict
        self.retry_after = retry_after

    @classmethod
    def broken(cls, peer: NodeRecord, what: str) -> _PeerFailed:
        error = APIError(
            502,
            f"Peer node {peer.node_id[:12]} {what}",
            code="peer_unreachable",
            headers={"Retry-After": "1"},
        )
        return cls(error, Verdict.COOL_DOWN)


@dataclass
class _Resume:
    """What a resumable stream needs to continue on another peer: the request's failover (the
    one policy), its original body and headers, and the transcript of what was delivered."""

    failover: Failover[APIError]
    payload: dict[str, Any]
    headers: dict[str, str]
    first: NodeRecord
    strip: bool = True
    transcript: StreamTranscript = field(init=False)

    def __post_init__(self) -> None:
        self.transcript = StreamTranscript(strip=self.strip, native=False)


class _Relay:
    """One accepted upstream response, relayed to our client.

    Event streams are passed on event by event, so a break never leaves half an event behind:
    what the client got is a prefix of whole events. A resumable stream (`resume`) then goes
    on from another peer (`_take_over`); any other, or one no peer can take over, ends with
    one error event.
    """

    def __init__(
        self,
        gateway: Gateway,
        request: Request,
        peer: NodeRecord,
        upstream: httpx.Response,
        in_flight: contextlib.ExitStack,
        resume: _Resume | None = None,
    ) -> None:
        self.gateway = gateway
        self.request = request
        self.peer = peer
        self.upstream = upstream
        self.in_flight = in_flight
        self.events = "text/event-stream" in upstream.headers.get("content-type", "")
        self.resume = resume if self.events else None
        if self.resume is not None:
            self.resume.transcript.native = request.url.path.endswith("/generate/stream")
            self.resume.transcript.serving(peer.node_id)
        self.delivered = 0  # whole events passed on

    async def body(self) -> AsyncIterator[bytes]:
        """Relays the peer's bytes as they arrive; closing it (client gone) closes the upstream."""
        if self.events:
            self.gateway._relays.add(self)
        try:
            if self.resume is not None:
                async for out in self._resumable(self.resume):
                    yield out
                return
            pending = b""
            try:
                if not self.events:  # a JSON body: nothing could follow a shutdown's cut
                    async for chunk in self.upstream.aiter_bytes():  # decoded: no encoding
                        yield chunk
                    return
                chunks = _chunks(self.upstream, None, self.gateway.stopping)
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        pending += chunk
                        whole, count, pending = _split_events(pending)
                        if count:
                            self.delivered += count
                            yield whole
            except httpx.HTTPError as exc:
                broken = self._broken(f"broke off its answer: {_describe(exc)}")
                if broken is not None:
                    yield broken
            except _Stopping:
                yield self._shutting_down()
        finally:
            self.gateway._relays.discard(self)
            self.in_flight.close()
            with contextlib.suppress(Exception):
                await self.upstream.aclose()

    async def _resumable(self, resume: _Resume) -> AsyncIterator[bytes]:
        """A generation stream, continued on the next peer whenever its peer fails."""
        transcript = resume.transcript
        while True:
            try:
                events = _events(self.upstream, self.gateway.stall_timeout, self.gateway.stopping)
                async for event in events:
                    out = transcript.relay(event)
                    if out is not None:
                        self.delivered += 1
                        yield out
                failure = "ended its stream before it was complete"
            except _Stopping:
                yield self._shutting_down()
                return
            except httpx.HTTPError as exc:
                failure = f"broke off its answer: {_describe(exc)}"
            except TimeoutError:
                failure = f"sent nothing for {self.gateway.stall_timeout:g} s"
            except UpstreamError as exc:
                failure = f"failed mid-stream: {exc}"
            if transcript.whole:  # at most the usage chunk or [DONE] was lost
                if not transcript.done:
                    yield DONE
                return
            if not await self._take_over(resume, failure):
                broken = self._broken(failure, cooled=True)
                if broken is not None:
                    yield broken
                return

    async def _take_over(self, resume: _Resume, failure: str) -> bool:
        """Cool the failed peer down, and continue the stream on the best peer with the same
        model fingerprint; False when none can."""
        failover, transcript = resume.failover, resume.transcript
        error = APIError(502, f"Peer node {self.peer.node_id[:12]} {failure}", code="peer_error")
        seconds = failover.failed(self.peer, Verdict.COOL_DOWN, error)
        log.warning("%s; cooling down %.0fs", error.detail.message, seconds)
        self.in_flight.close()
        with contextlib.suppress(Exception):
            await self.upstream.aclose()
        if not failover.resume_on_same_model(resume.first):
            return False
        identity = model_identity(resume.first, failover.model)
        content = json.dumps(
            resume_body(
                resume.payload,
                transcript.token_ids,
                fingerprint=identity[0] if identity else None,
                stream_id=transcript.stream_id,
                created=transcript.created,
                index=transcript.next_index,
                deltas=transcript.deltas,
            ),
            separators=(",", ":"),
        ).encode()
        gateway = self.gateway
        while (peer := await failover.next_node()) is not None:
            url = peer.url.rstrip("/") + self.request.url.path
            outgoing = gateway._http.build_request(
                "POST", url, content=content, headers=resume.headers
            )
            in_flight = contextlib.ExitStack()
            in_flight.enter_context(gateway.selector.track(peer.node_id))
            try:
                upstream = await wait_for_answer(
                    gateway._http.send(outgoing, stream=True),
                    first_byte_timeout=gateway.first_byte_timeout,
                    alive=lambda peer=peer: gateway._alive(peer),  # type: ignore[misc]
                )
            except (httpx.HTTPError, TimeoutError) as exc:
                in_flight.close()
                failed = _PeerFailed.broken(peer, f"failed before answering: {_describe(exc)}")
                failover.failed(peer, failed.verdict, failed.error)
                continue
            except BaseException:
                in_flight.close()
                raise
            if upstream.status_code >= 400 or "text/event-stream" not in upstream.headers.get(
                "content-type", ""
            ):
                try:
                    if upstream.status_code < 500:
                        await upstream.aread()
                except httpx.HTTPError:
                    pass
                finally:
                    await upstream.aclose()
                    in_flight.close()
                try:
                    gateway._error_answer(peer, upstream)
                except _PeerFailed as exc:
                    failover.failed(peer, exc.verdict, exc.error, retry_after=exc.retry_after)
                    log.warning("resuming on %s: %s", peer.node_id[:12], exc.error.detail.message)
                    continue
                log.warning("peer %s refused to resume the stream", peer.node_id[:12])
                return False  # the caller's error: every peer would refuse the same
            self.peer, self.upstream, self.in_flight = peer, upstream, in_flight
            transcript.serving(peer.node_id)
            log.info(
                "resumed a stream on %s after %d tokens",
                peer.node_id[:12],
                len(transcript.token_ids),
            )
            return True
        return False

    def _shutting_down(self) -> bytes:
        """The event that ends a relayed stream when this node stops before it is done."""
        self.request.state.failed_status = 503
        error = APIError(
            503,
            f"node {self.gateway.node_id[:12]} relaying this stream is shutting down",
            code="shutting_down",
        )
        return format_sse_event(data_str=json.dumps(error.body(), separators=(",", ":")))

    def _broken(self, failure: str, *, cooled: bool = False) -> bytes | None:
        """The peer broke off after its head: cool it down, count the request as a 502, and
        end an event stream with the error event the README promises."""
        self.request.state.failed_status = 502
        if not cooled:
            self.gateway.mark_failed(self.peer, failure)
        if not self.events:
            return None  # a JSON body cannot carry an error after its head: it just ends
        error = APIError(
            502,
            f"The peer node {self.peer.node_id[:12]} serving this stream failed ({failure})"
            + ("; no other node with the same model could resume it" if cooled else ""),
            code="peer_stream_broken",
        )
        return format_sse_event(data_str=json.dumps(error.body(), separators=(",", ":")))


class _Stopping(Exception):
    """The node is stopping (`Gateway.drain`): the relay ends its stream now."""


async def _chunks(
    upstream: httpx.Response, stall_timeout: float | None, stopping: asyncio.Event
) -> AsyncGenerator[bytes, None]:
    """The bytes of `upstream` as they come (read ahead: `llamanet.node.read_ahead` says why);
    `TimeoutError` after `stall_timeout` seconds without any (None: no limit), `_Stopping`
    once `stopping` is set."""
    async with contextlib.aclosing(
        read_ahead(upstream.aiter_bytes(), stall_timeout, stopping)
    ) as chunks:
        async for chunk in chunks:
            if chunk is SILENT:
                raise TimeoutError
            if chunk is STOPPED:
                raise _Stopping
            yield chunk  # type: ignore[misc]


async def _events(
    upstream: httpx.Response, stall_timeout: float, stopping: asyncio.Event
) -> AsyncGenerator[bytes, None]:
    """The whole SSE events of `upstream` one by one; `TimeoutError` after `stall_timeout`
    seconds without a byte, `_Stopping` once `stopping` is set."""
    pending = b""
    chunks = _chunks(upstream, stall_timeout, stopping)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            pending += chunk
            start = 0
            for match in _EVENT_END.finditer(pending):
                yield pending[start : match.end()]
                start = match.end()
            pending = pending[start:]


# --------------------------------------------------------------------------- helpers


def _split_events(buffer: bytes) -> tuple[bytes, int, bytes]:
    """(the whole events at the start of `buffer`, how many, the incomplete rest)."""
    end = count = 0
    for match in _EVENT_END.finditer(buffer):
        end = match.end()
        count += 1
    return buffer[:end], count, buffer[end:]


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _estimate(body: bytes) -> int:
    try:
        parsed = json.loads(body)
    except ValueError:
        return 0
    return estimate_request_tokens(parsed) if isinstance(parsed, dict) else 0


def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _error_fields(content: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(content)
    except ValueError:
        return {}
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def _seconds(value: float) -> str:
    return str(max(1, round(value)))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _no_capacity(message: str, retry_after: float) -> APIError:
    return APIError(
        503,
        f"{message}; retry in {_seconds(retry_after)} s.",
        code="no_capacity",
        headers={"Retry-After": _seconds(retry_after)},
    )
