"""`LlamaNetClient`: discovery, routing and failover over the nodes' native API.

One pooled `httpx.AsyncClient` carries every request; streams are read with `httpx-sse`.
Discovery comes from node URLs (`GET /nodes`) and/or the DHT (as a light client), refreshed in
the background; `NodeSelector` (the router nodes use too) picks the node for each request.

A request that fails before its first token (connection refused, timeout, 5xx, 503, 429) moves
to the next best node, up to `retries` extra attempts, and the failed node cools down. Any other
4xx is the caller's error and is raised at once. A stream that breaks after tokens were delivered
raises `StreamInterrupted`: never a silently short answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import ValidationError

from llamanet._version import __version__
from llamanet.protocol import (
    NODE_HEADER,
    ChatMessage,
    ErrorDetail,
    GenerateResponse,
    ModelCard,
    NodeList,
    NodeRecord,
    StreamingChunk,
    StreamingRequest,
)
from llamanet.swarm.selector import NodeSelector

__all__ = [
    "LlamaNetClient",
    "LlamaNetError",
    "NoNodeAvailable",
    "NodeError",
    "NodeUnreachable",
    "RecordCache",
    "SamplingOptions",
    "StreamInterrupted",
    "SyncLlamaNetClient",
    "estimate_prompt_tokens",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_NODE_URL = "http://127.0.0.1:8000"
DEFAULT_DHT_PORT = 8001
CLOCK_SKEW_ALLOWANCE = 300.0  # as `records.CLOCK_SKEW`: a peer's clock may be off by this
DISCOVERY_TIMEOUT = 10.0  # a `/nodes` answer may wait on a DHT lookup
RTT_PROBES_PER_REFRESH = 8
RTT_PROBE_INTERVAL = 30.0
# error types that are the caller's fault wherever the request goes
CALLER_ERROR_TYPES = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "not_found_error"}
)


# --------------------------------------------------------------------------- errors


class LlamaNetError(Exception):
    """Base of every error the client raises."""


class NodeError(LlamaNetError):
    """A node answered with an error: an HTTP 4xx/5xx, or an error event inside a stream.

    `status` is None for an error event inside a stream.
    """

    def __init__(
        self,
        status: int | None,
        error: ErrorDetail,
        *,
        node_id: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        where = f" from node {node_id[:12]}" if node_id else ""
        code = f"HTTP {status}" if status is not None else "stream error"
        super().__init__(f"{code}{where}: {error.message} ({error.type}, {error.code})")
        self.status = status
        self.error = error
        self.node_id = node_id
        self.url = url
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether another node might succeed where this one failed."""
        if self.error.code == "model_not_found":
            return True  # we chose the node because its record said it serves the model: stale
        if self.status is None:
            return self.error.type not in CALLER_ERROR_TYPES
        return self.status >= 500 or self.status == 429


class NodeUnreachable(LlamaNetError):
    """A node could not be reached or sent something that was not a valid answer."""

    def __init__(self, node_id: str, url: str, cause: BaseException) -> None:
        super().__init__(f"node {node_id[:12]} at {url} failed: {type(cause).__name__}: {cause}")
        self.node_id = node_id
        self.url = url
        self.cause = cause


class NoNodeAvailable(LlamaNetError):
    """No node could take the request; `attempts` lists each node tried and how it failed."""

    def __init__(self, message: str, attempts: Sequence[NodeError | NodeUnreachable] = ()) -> None:
        if attempts:
            message += "; attempts: " + "; ".join(str(a) for a in attempts)
        super().__init__(message)
        self.attempts = list(attempts)


class StreamInterrupted(LlamaNetError):
    """A stream broke after `tokens_received` chunks had been delivered: the answer is partial."""

    def __init__(
        self,
        node_id: str,
        url: str,
        tokens_received: int,
        *,
        error: NodeError | None = None,
        reason: str = "",
    ) -> None:
        detail = reason or (str(error) if error else "the stream ended early")
        super().__init__(
            f"stream from node {node_id[:12]} at {url} broke after {tokens_received} "
            f"chunks: {detail}"
        )
        self.node_id = node_id
        self.url = url
        self.tokens_received = tokens_received
        self.error = error


class _Malformed(Exception):
    """A node's answer did not parse: treated like an unreachable node."""


# --------------------------------------------------------------------------- helpers


class SamplingOptions(TypedDict, total=False):
    """Options beyond `max_tokens` / `temperature`: sampling (`protocol.SamplingFields`) and
    what shapes the answer (`protocol.ChoiceFields`, passed through as the chat API spells
    them: `response_format`, `tools`, `tool_choice`, `logprobs`, `n`, ...)."""

    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    stop: str | list[str] | None
    n: int
    response_format: dict[str, Any] | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    parallel_tool_calls: bool | None
    logprobs: bool | None
    top_logprobs: int | None
    logit_bias: dict[str, float] | None


MessageLike = ChatMessage | dict[str, Any]


def _estimate_text_tokens(text: str) -> int:
    # ~4 bytes per token for English with common tokenizers; 3 keeps the estimate on the high side
    return -(-len(text.encode("utf-8")) // 3)


def estimate_prompt_tokens(
    prompt: str | None = None, messages: Sequence[ChatMessage] | None = None
) -> int:
    """A deliberately high estimate of the prompt's tokens (the node enforces exact limits)."""
    if messages is not None:
        return 8 + sum(_estimate_text_tokens(m.text()) + 8 for m in messages)
    return 2 + _estimate_text_tokens(prompt or "")


def _normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        return value.strip(), DEFAULT_DHT_PORT
    return host.strip("[]") or "127.0.0.1", int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_detail(payload: Any, status: int | None, fallback: str) -> ErrorDetail:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        with contextlib.suppress(ValidationError):
            return ErrorDetail.model_validate(payload["error"])
    kind = "server_error" if status is None or status >= 500 else "invalid_request_error"
    return ErrorDetail(message=fallback[:500] or "no error message", type=kind)


def _response_error(response: httpx.Response, node_id: str, url: str) -> NodeError:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = _error_detail(payload, response.status_code, response.text)
    return NodeError(
        response.status_code,
        detail,
        node_id=response.headers.get(NODE_HEADER, node_id),
        url=url,
        retry_after=_retry_after(response),
    )


def _as_messages(messages: Sequence[MessageLike]) -> list[ChatMessage]:
    return [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]


# --------------------------------------------------------------------------- record cache


@dataclass
class _Entry:
    record: NodeRecord
    deadline: float  # local monotonic time the record expires


class RecordCache:
    """The live records this client knows, newest per node, each dropped when its ttl runs out.

    A record's `ttl` is the life it had left when issued, so it lives at most `ttl` from the
    moment this client first saw it (seeing the same `seq` again does not extend it), and never
    past `issued_at + ttl` on the wall clock, give or take the allowed clock skew. Every new
    record's signature is verified (`records.verify_record`) before it is used, wherever it
    came from: a node can vouch only for records their owners signed.
    """

    def __init__(
        self,
        *,
        verify: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._verify = verify
        self._clock = clock
        self._wall_clock = wall_clock
        self.rejected = 0

    def merge(self, records: Sequence[NodeRecord]) -> None:
        now, wall = self._clock(), self._wall_clock()
        for record in records:
            held = self._entries.get(record.node_id)
            if held is not None and record.seq <= held.record.seq:
                continue
            wall_left = record.issued_at + record.ttl + CLOCK_SKEW_ALLOWANCE - wall
            deadline = now + min(record.ttl, wall_left)
            if deadline > now and self._valid(record, wall):
                self._entries[record.node_id] = _Entry(record, deadline)

    def _valid(self, record: NodeRecord, wall: float) -> bool:
        if not self._verify:
            return True
        from llamanet.swarm.records import InvalidRecord, verify_record  # cryptography: load lazily

        try:
            verify_record(record, now=wall)
        except InvalidRecord as exc:
            self.rejected += 1
            log.debug("dropped a record of %s: %s", record.node_id[:12], exc)
            return False
        return True

    def live(self) -> list[NodeRecord]:
        """Unexpired records, withdrawn ones (tombstones) included."""
        now = self._clock()
        for node_id in [n for n, e in self._entries.items() if e.deadline <= now]:
            del self._entries[node_id]
        return [e.record for e in self._entries.values()]

    def active(self) -> list[NodeRecord]:
        """Unexpired records of nodes that have not withdrawn, by node id."""
        return sorted((r for r in self.live() if not r.withdrawn), key=lambda r: r.node_id)


# --------------------------------------------------------------------------- failover


class _Failover:
    """The successive nodes one request tries, and what went wrong with each."""

    def __init__(self, client: LlamaNetClient, request: StreamingRequest) -> None:
        self.client = client
        self.model = request.model
        self.max_tokens = request.max_tokens or 0
        self.prompt_tokens = estimate_prompt_tokens(request.prompt, request.messages)
        self.tried: set[str] = set()
        self.failures: list[NodeError | NodeUnreachable] = []
        self.refreshed = False

    async def next_node(self) -> tuple[NodeRecord, str] | None:
        if len(self.tried) > self.client.retries:
            return None
        node = self._pick()
        if node is None and not self.refreshed:
            self.refreshed = True  # nothing left: one discovery round might find more nodes
            await self.client.refresh()
            node = self._pick()
        if node is None:
            return None
        self.tried.add(node.node_id)
        return node, self.client.url_of(node)

    def _pick(self) -> NodeRecord | None:
        records = self.client.records.live()
        select = self.client.selector.select
        kwargs: dict[str, Any] = {"model": self.model, "exclude": self.tried}
        node = select(
            records, prompt_tokens=self.prompt_tokens, max_tokens=self.max_tokens, **kwargs
        )
        if node is None and self.prompt_tokens:
            # the estimate is deliberately high: let a node that may fit decide exactly
            node = select(records, max_tokens=self.max_tokens, **kwargs)
        return node

    def failed(self, node_id: str, failure: NodeError | NodeUnreachable) -> None:
        retry_after = failure.retry_after if isinstance(failure, NodeError) else None
        cooldown = self.client.selector.mark_failed(node_id, retry_after=retry_after)
        log.warning("%s; cooling down %.0fs, trying another node", failure, cooldown)
        self.failures.append(failure)

    def exhausted(self) -> NoNodeAvailable:
        what = f"model {self.model!r}" if self.model else "the request"
        if self.failures:
            return NoNodeAvailable(f"every node tried for {what} failed", self.failures)
        known = self.client.records.active()
        if not known:
            return NoNodeAvailable(
                f"no node known: discovery from {self.client.sources()} found none"
            )
        records = [r for r in known if r.serves(self.model)]
        cooling = [r for r in records if self.client.selector.in_cooldown(r.node_id)]
        return NoNodeAvailable(
            f"no node available for {what}: {len(records)} known serve it, "
            f"{len(cooling)} of them cooling down after failures"
        )


@dataclass
class _StreamState:
    delivered: int = 0
    complete: bool = False


# --------------------------------------------------------------------------- client


class LlamaNetClient:
    """Async client of a LlamaNet swarm. Use as `async with LlamaNetClient(...) as client:`.

    `nodes` are node URLs to discover the swarm from (`GET /nodes`); `bootstrap` are DHT peers
    (`host:port`) to join as a light client. With neither, `http://127.0.0.1:8000` is used.
    `model` is the default model of requests (None: any node's model). `transport` replaces
    httpx's network transport (tests, custom proxies).
    """

    def __init__(
        self,
        *,
        bootstrap: Sequence[str] = (),
        nodes: Sequence[str] = (),
        model: str | None = None,
        strategy: str = "load_balanced",
        min_tps: float | None = None,
        max_load: float | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 3.0,
        retries: int = 2,
        api_key: str | None = None,
        refresh_interval: float = 5.0,
        selector: NodeSelector | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.bootstrap = [_parse_hostport(b) for b in bootstrap]
        self.seed_urls = [_normalize_url(u) for u in nodes]
        if not self.seed_urls and not self.bootstrap:
            self.seed_urls = [DEFAULT_NODE_URL]
        self.model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.refresh_interval = refresh_interval
        self.selector = selector or NodeSelector(strategy, min_tps=min_tps, max_load=max_load)
        self.records = RecordCache()
        self._api_key = api_key
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._dht: Any = None
        self._url_override: dict[str, str] = {}
        self._rtt_probed: dict[str, float] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LlamaNetClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Opens the HTTP pool, joins the DHT if asked, runs the first discovery round."""
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise LlamaNetError("this client is closed")
            self._http = self._make_http()
            try:
                if self.bootstrap:
                    await self._start_dht()
                await self.refresh()
            except BaseException:
                await self._shutdown()
                raise
            self._refresher = asyncio.create_task(self._refresh_loop(), name="llamanet-refresh")
            self._started = True

    async def close(self) -> None:
        """Stops background discovery, leaves the DHT and closes the HTTP pool."""
        self._closed = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        for task in (self._refresher, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._refresher = self._refreshing = None
        if self._dht is not None:
            dht, self._dht = self._dht, None
            with contextlib.suppress(Exception):
                await dht.stop()
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()
        self._started = False

    def _make_http(self) -> httpx.AsyncClient:
        headers = {"User-Agent": f"llamanet-client/{__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            headers=headers,
            transport=self._transport,
        )

    async def _start_dht(self) -> None:
        from llamanet.swarm.dht import DHTNode

        host = "127.0.0.1" if all(_is_loopback(h) for h, _ in self.bootstrap) else "0.0.0.0"
        dht = DHTNode(identity=None)
        await dht.start(host, 0)
        self._dht = dht
        await dht.bootstrap(self.bootstrap)

    async def _ensure_started(self) -> httpx.AsyncClient:
        if not self._started:
            await self.start()
        assert self._http is not None
        return self._http

    # ------------------------------------------------------------------ discovery

    async def refresh(self) -> None:
        """One discovery round now (concurrent callers share it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._discover())
        await asyncio.shield(self._refreshing)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self._probe_rtts()
            except Exception as exc:
                log.debug("rtt probes failed: %r", exc)
            await asyncio.sleep(self._refresh_delay())
            try:
                await self.refresh()
            except Exception as exc:  # discovery is best effort; keep the records we have
                log.warning("node discovery failed: %s", exc)

    def _refresh_delay(self) -> float:
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
        assert self._http is not None
        timeout = httpx.Timeout(DISCOVERY_TIMEOUT, connect=self.connect_timeout)
        response = await self._http.get(f"{url}/nodes", timeout=timeout)
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

    async def _probe_rtts(self) -> None:
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
        assert self._http is not None
        self._rtt_probed[record.node_id] = time.monotonic()
        started = time.perf_counter()
        timeout = httpx.Timeout(self.connect_timeout)
        try:
            await self._http.get(f"{self.url_of(record)}/health", timeout=timeout)
        except httpx.HTTPError:
            return  # a failed probe says nothing about latency; requests decide on cooldown
        self.selector.record_rtt(record.node_id, time.perf_counter() - started)

    def sources(self) -> str:
        """Where this client discovers nodes, for messages."""
        urls = [f"{u}/nodes" for u in self.seed_urls]
        peers = [f"DHT peer {h}:{p}" for h, p in self.bootstrap]
        return ", ".join(urls + peers)

    def url_of(self, record: NodeRecord) -> str:
        """The base URL to reach a node."""
        return self._url_override.get(record.node_id) or _normalize_url(record.url)

    # ------------------------------------------------------------------ public API

    async def nodes(self) -> list[NodeRecord]:
        """The live nodes known (withdrawn ones left out), by node id."""
        await self._ensure_started()
        return self.records.active()

    async def models(self) -> list[ModelCard]:
        """The models served in the swarm, each with the number of nodes serving it."""
        await self._ensure_started()
        cards: dict[str, ModelCard] = {}
        for record in self.records.active():
            for info in record.models:
                card = cards.get(info.id)
                if card is None:
                    cards[info.id] = ModelCard(id=info.id, nodes=1, n_ctx=info.n_ctx)
                else:
                    card.nodes += 1
                    card.n_ctx = max(card.n_ctx or 0, info.n_ctx)
        return [cards[k] for k in sorted(cards)]

    async def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        model: str | None = None,
        **options: Unpack[SamplingOptions],
    ) -> GenerateResponse:
        """Complete `prompt` on the best node (`POST /generate`)."""
        request = self._request(prompt, None, max_tokens, temperature, model, options)
        return await self._complete(request)

    async def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        model: str | None = None,
        **options: Unpack[SamplingOptions],
    ) -> GenerateResponse:
        """Answer a chat conversation on the best node (`POST /generate` with `messages`)."""
        request = self._request(None, messages, max_tokens, temperature, model, options)
        return await self._complete(request)

    async def generate_stream(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        model: str | None = None,
        **options: Unpack[SamplingOptions],
    ) -> AsyncGenerator[StreamingChunk, None]:
        """Stream the completion of `prompt` chunk by chunk (`POST /generate/stream`)."""
        request = self._request(prompt, None, max_tokens, temperature, model, options)
        async with contextlib.aclosing(self._stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def chat_stream(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        model: str | None = None,
        **options: Unpack[SamplingOptions],
    ) -> AsyncGenerator[StreamingChunk, None]:
        """Stream the answer to a chat conversation chunk by chunk."""
        request = self._request(None, messages, max_tokens, temperature, model, options)
        async with contextlib.aclosing(self._stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    @classmethod
    def sync(cls, **kwargs: Any) -> SyncLlamaNetClient:
        """A blocking facade for scripts; takes the same keyword arguments."""
        return SyncLlamaNetClient(**kwargs)

    # ------------------------------------------------------------------ requests

    def _request(
        self,
        prompt: str | None,
        messages: Sequence[MessageLike] | None,
        max_tokens: int,
        temperature: float,
        model: str | None,
        options: SamplingOptions,
    ) -> StreamingRequest:
        return StreamingRequest.model_validate(
            {
                "prompt": prompt,
                "messages": _as_messages(messages) if messages is not None else None,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "model": model or self.model,
                **options,
            }
        )

    async def _complete(self, request: StreamingRequest) -> GenerateResponse:
        http = await self._ensure_started()
        body = request.model_dump(exclude_none=True)
        failover = _Failover(self, request)
        while (target := await failover.next_node()) is not None:
            node, url = target
            try:
                with self.selector.track(node.node_id):
                    response = await http.post(f"{url}/generate", json=body)
                result = self._parse_result(response, node.node_id, url)
            except (httpx.TransportError, _Malformed) as exc:
                failover.failed(node.node_id, NodeUnreachable(node.node_id, url, exc))
                continue
            except NodeError as err:
                if not err.retryable:
                    raise
                failover.failed(node.node_id, err)
                continue
            self.selector.mark_ok(node.node_id)
            return result
        raise failover.exhausted()

    @staticmethod
    def _parse_result(response: httpx.Response, node_id: str, url: str) -> GenerateResponse:
        if response.status_code >= 400:
            raise _response_error(response, node_id, url)
        try:
            return GenerateResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise _Malformed(f"not a GenerateResponse: {exc}") from exc

    async def _stream(self, request: StreamingRequest) -> AsyncGenerator[StreamingChunk, None]:
        http = await self._ensure_started()
        body = request.model_dump(exclude_none=True)
        failover = _Failover(self, request)
        while (target := await failover.next_node()) is not None:
            node, url = target
            state = _StreamState()
            try:
                with self.selector.track(node.node_id):
                    events = self._stream_from(http, node.node_id, url, body, state)
                    async with contextlib.aclosing(events) as chunks:
                        async for chunk in chunks:
                            yield chunk
                if not state.complete:
                    raise _Malformed("the stream ended without [DONE]")
            except (httpx.TransportError, SSEError, _Malformed, NodeError) as exc:
                failure = _stream_failure(exc, node.node_id, url, state)
                if failure is not None:
                    failover.failed(node.node_id, failure)
                    continue
            self.selector.mark_ok(node.node_id)
            return
        raise failover.exhausted()

    async def _stream_from(
        self,
        http: httpx.AsyncClient,
        node_id: str,
        url: str,
        body: dict[str, Any],
        state: _StreamState,
    ) -> AsyncGenerator[StreamingChunk, None]:
        async with aconnect_sse(http, "POST", f"{url}/generate/stream", json=body) as source:
            response = source.response
            if response.status_code >= 400:
                await response.aread()
                raise _response_error(response, node_id, url)
            served_by = response.headers.get(NODE_HEADER, node_id)
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    state.complete = True
                    return
                chunk = _parse_chunk(event.data, served_by, url)
                if chunk.finished:
                    state.complete = True  # the answer is whole even if [DONE] never comes
                state.delivered += 1
                yield chunk


def _stream_failure(
    exc: Exception, node_id: str, url: str, state: _StreamState
) -> NodeError | NodeUnreachable | None:
    """What a failed stream means for failover: a failure to record, None if the answer was
    whole after all; raises when it must reach the caller (tokens were sent, or caller error)."""
    if state.complete:
        log.debug("stream from %s ended uncleanly after it finished: %r", url, exc)
        return None
    if state.delivered:
        error = exc if isinstance(exc, NodeError) else None
        reason = "" if error else f"{type(exc).__name__}: {exc}"
        raise StreamInterrupted(node_id, url, state.delivered, error=error, reason=reason) from exc
    if isinstance(exc, NodeError):
        if not exc.retryable:
            raise exc
        return exc
    return NodeUnreachable(node_id, url, exc)


def _parse_chunk(data: str, node_id: str, url: str) -> StreamingChunk:
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise _Malformed(f"an event is not JSON: {data[:100]!r}") from exc
    if isinstance(payload, dict) and "error" in payload:
        detail = _error_detail(payload, None, json.dumps(payload)[:500])
        raise NodeError(None, detail, node_id=node_id, url=url)
    try:
        return StreamingChunk.model_validate(payload)
    except ValidationError as exc:
        raise _Malformed(f"not a StreamingChunk: {data[:100]!r}") from exc


# --------------------------------------------------------------------------- blocking facade


async def _next_or_none(stream: AsyncGenerator[StreamingChunk, None]) -> StreamingChunk | None:
    return await anext(stream, None)


async def _aclose(stream: AsyncGenerator[StreamingChunk, None]) -> None:
    await stream.aclose()


class SyncLlamaNetClient:
    """Blocking facade over `LlamaNetClient` for scripts: an event loop on a daemon thread.

    Use as `with LlamaNetClient.sync(nodes=[...]) as client: print(client.generate("Hi").text)`.
    Streams are plain iterators; breaking out of one stops generation on the node.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llamanet-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._client: LlamaNetClient = self._run(self._make_client(kwargs))
            self._run(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make_client(kwargs: dict[str, Any]) -> LlamaNetClient:
        return LlamaNetClient(**kwargs)  # built on the loop thread, where it will run

    def __enter__(self) -> SyncLlamaNetClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def client(self) -> LlamaNetClient:
        """The async client underneath."""
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise LlamaNetError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C: stop the work on the loop too
            raise

    def _iterate(self, stream: AsyncGenerator[StreamingChunk, None]) -> Iterator[StreamingChunk]:
        try:
            while (chunk := self._run(_next_or_none(stream))) is not None:
                yield chunk
        finally:
            if not self._closed:
                with contextlib.suppress(RuntimeError):  # still running after a Ctrl-C
                    self._run(_aclose(stream))

    def generate(self, prompt: str, **kwargs: Any) -> GenerateResponse:
        return self._run(self._client.generate(prompt, **kwargs))

    def chat(self, messages: Sequence[MessageLike], **kwargs: Any) -> GenerateResponse:
        return self._run(self._client.chat(messages, **kwargs))

    def generate_stream(self, prompt: str, **kwargs: Any) -> Iterator[StreamingChunk]:
        return self._iterate(self._client.generate_stream(prompt, **kwargs))

    def chat_stream(
        self, messages: Sequence[MessageLike], **kwargs: Any
    ) -> Iterator[StreamingChunk]:
        return self._iterate(self._client.chat_stream(messages, **kwargs))

    def models(self) -> list[ModelCard]:
        return self._run(self._client.models())

    def nodes(self) -> list[NodeRecord]:
        return self._run(self._client.nodes())

    def refresh(self) -> None:
        self._run(self._client.refresh())

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
