"""`LlamaNetClient`: discovery, routing and failover over the nodes' native API.

One pooled `httpx.AsyncClient` carries every request; streams are read with `httpx-sse`.
Discovery (`_discovery.py`) comes from node URLs (`GET /nodes`) and/or the DHT as a light
client, refreshed in the background; `NodeSelector` (the router nodes use too) picks the node
for each request, and `llamanet.swarm.failover` (the gateway's policy too) decides what a
failure means: a busy node is skipped, a broken one cooled down, a caller error raised.

A node gets `first_byte_timeout` seconds to start its answer; past that, a liveness probe
decides between a busy node (keep waiting, up to `timeout`) and a frozen one (next node). A
stream that breaks, ends early or stalls (nothing, the nodes' keep-alives included, for
`stall_timeout` seconds) after tokens were delivered is resumed on a node with the same model
fingerprint, from the token ids the chunks carried and the count of its text and call chunks
(`llamanet.swarm.resume`): the caller sees one stream. Only when no node can take over does it
raise `StreamInterrupted`: never a silently short answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

import httpx
from httpx_sse import EventSource, SSEError
from pydantic import ValidationError

from llamanet._version import __version__
from llamanet.client._cache import RecordCache
from llamanet.client._discovery import Discovery
from llamanet.client._embeddings import EmbeddingInput, decode_embeddings
from llamanet.client._errors import (
    LlamaNetError,
    MalformedAnswer,
    NodeError,
    NodeUnreachable,
    NoNodeAvailable,
    StreamInterrupted,
    error_detail,
    response_error,
)
from llamanet.protocol import (
    NODE_HEADER,
    ChatMessage,
    GenerateResponse,
    ModelCard,
    NodeRecord,
    StreamingChunk,
    StreamingRequest,
)
from llamanet.swarm.failover import (
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    Failover,
    Verdict,
    estimate_prompt_tokens,
    model_identity,
    swarm_models,
    wait_for_answer,
)
from llamanet.swarm.resume import CONTROL_FIELD, TOKEN_IDS_FIELD, resume_body
from llamanet.swarm.selector import NodeSelector

if TYPE_CHECKING:
    from llamanet.client._sync import SyncLlamaNetClient

__all__ = ["LlamaNetClient", "MessageLike", "SamplingOptions"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Failure = NodeError | NodeUnreachable
_REQUEST_FAILURES = (httpx.TransportError, MalformedAnswer, TimeoutError)
_STREAM_FAILURES = (*_REQUEST_FAILURES, SSEError, NodeError)


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


def _as_messages(messages: Sequence[MessageLike]) -> list[ChatMessage]:
    return [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]


@dataclass
class _StreamState:
    delivered: int = 0
    complete: bool = False


@dataclass
class _Delivered:
    """What the caller has of a stream across the nodes that served it."""

    chunks: int = 0
    token_ids: list[int] = field(default_factory=list)
    next_index: int = 0
    deltas: int = 0  # text and tool-call chunks (those with the token ids field, even empty)
    nodes: list[NodeRecord] = field(default_factory=list)


class LlamaNetClient:
    """Async client of a LlamaNet swarm. Use as `async with LlamaNetClient(...) as client:`.

    `nodes` are node URLs to discover the swarm from (`GET /nodes`); `bootstrap` are DHT peers
    (`host:port`) to join as a light client. With neither, `http://127.0.0.1:8000` is used.
    `model` is the default model of requests (None: any node's model). A node must start its
    answer within `first_byte_timeout` seconds or prove it is alive (`GET /health`), and may
    then take up to `timeout` seconds between bytes; a stream silent for `stall_timeout`
    seconds (nodes send keep-alives while a request waits) is resumed elsewhere. `transport`
    replaces httpx's network transport (tests, custom proxies).
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
        first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        retries: int = 2,
        api_key: str | None = None,
        refresh_interval: float = 5.0,
        selector: NodeSelector | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if first_byte_timeout <= 0:
            raise ValueError("first_byte_timeout must be positive")
        self.model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        self.first_byte_timeout = first_byte_timeout
        self.stall_timeout = stall_timeout
        self.retries = retries
        self.selector = selector or NodeSelector(strategy, min_tps=min_tps, max_load=max_load)
        self.discovery = Discovery(
            self.selector,
            nodes=nodes,
            bootstrap=bootstrap,
            connect_timeout=connect_timeout,
            refresh_interval=refresh_interval,
        )
        self._api_key = api_key
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    @property
    def records(self) -> RecordCache:
        """The records this client knows."""
        return self.discovery.records

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
                await self.discovery.start(self._http)
            except BaseException:
                await self._shutdown()
                raise
            self._refresher = asyncio.create_task(self.discovery.run(), name="llamanet-refresh")
            self._started = True

    async def close(self) -> None:
        """Stops background discovery, leaves the DHT and closes the HTTP pool."""
        self._closed = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._refresher is not None and not self._refresher.done():
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        self._refresher = None
        await self.discovery.stop()
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

    async def _ensure_started(self) -> httpx.AsyncClient:
        if not self._started:
            await self.start()
        assert self._http is not None
        return self._http

    # ------------------------------------------------------------------ discovery

    async def refresh(self) -> None:
        """One discovery round now (concurrent callers share it)."""
        await self.discovery.refresh()

    def sources(self) -> str:
        """Where this client discovers nodes, for messages."""
        return self.discovery.sources()

    def url_of(self, record: NodeRecord) -> str:
        """The base URL to reach a node."""
        return self.discovery.url_of(record)

    # ------------------------------------------------------------------ public API

    async def nodes(self) -> list[NodeRecord]:
        """The live nodes known (withdrawn ones left out), by node id."""
        await self._ensure_started()
        return self.records.active()

    async def models(self) -> list[ModelCard]:
        """The models served in the swarm, each with the number of nodes serving it and the
        largest context among them (`llamanet.swarm.failover.swarm_models`)."""
        await self._ensure_started()
        return swarm_models(self.records.active())

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
        from llamanet.client._sync import SyncLlamaNetClient

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

    def _failover(self, request: StreamingRequest) -> Failover[Failure]:
        return Failover(
            self.selector,
            records=self.records.live,
            refresh=self.refresh,
            model=request.model,
            prompt_tokens=estimate_prompt_tokens(request.prompt, request.messages),
            max_tokens=request.max_tokens or 0,
            attempts=self.retries + 1,
        )

    async def _answer(self, node: NodeRecord, answer: Awaitable[T]) -> T:
        """`answer` (a node's response head), unless the node is frozen (`wait_for_answer`)."""
        return await wait_for_answer(
            answer,
            first_byte_timeout=self.first_byte_timeout,
            alive=lambda: self.discovery.alive(node, self.first_byte_timeout),
        )

    def _failed(self, failover: Failover[Failure], node: NodeRecord, failure: Failure) -> bool:
        """Hands a failure to the policy; False if it must reach the caller instead."""
        if isinstance(failure, NodeError):
            verdict, retry_after = failure.verdict, failure.retry_after
        else:
            verdict, retry_after = Verdict.COOL_DOWN, None
        if verdict is Verdict.RAISE:
            return False
        cooldown = failover.failed(node, verdict, failure, retry_after=retry_after)
        if cooldown:
            log.warning("%s; cooling down %.0fs, trying another node", failure, cooldown)
        else:
            log.info("%s; trying another node", failure)
        return True

    def _exhausted(self, failover: Failover[Failure]) -> NoNodeAvailable:
        what = f"model {failover.model!r}" if failover.model else "the request"
        if failover.failures:
            how = "was busy" if failover.all_busy else "failed"
            return NoNodeAvailable(
                f"every node tried for {what} {how}", [a.failure for a in failover.failures]
            )
        if not self.records.active():
            return NoNodeAvailable(f"no node known: discovery from {self.sources()} found none")
        if failover.capability and not failover.candidates():
            return NoNodeAvailable(
                f"no node known serves {failover.capability} for {what} "
                f"(discovery: {self.sources()})"
            )
        serving, cooling = failover.candidates(), failover.cooling()
        return NoNodeAvailable(
            f"no node available for {what}: {len(serving)} known serve it, "
            f"{len(cooling)} of them cooling down after failures"
        )

    async def _complete(self, request: StreamingRequest) -> GenerateResponse:
        http = await self._ensure_started()
        body = request.model_dump(exclude_none=True)
        failover = self._failover(request)
        while (node := await failover.next_node()) is not None:
            url = self.url_of(node)
            try:
                with self.selector.track(node.node_id):
                    response = await self._answer(node, http.post(f"{url}/generate", json=body))
                result = self._parse_result(response, node.node_id, url)
            except _REQUEST_FAILURES as exc:
                self._failed(failover, node, NodeUnreachable(node.node_id, url, exc))
                continue
            except NodeError as err:
                if not self._failed(failover, node, err):
                    raise
                continue
            failover.succeeded(node)
            return result
        raise self._exhausted(failover)

    async def embed(self, inputs: EmbeddingInput, *, model: str | None = None) -> list[list[float]]:
        """Embedding vectors (`POST /v1/embeddings`), one per input, mean-pooled and of length 1,
        from a node whose record advertises embeddings; `inputs` is a string, a list of
        strings, a token array or a list of token arrays (one string or array: one vector).
        Fails over like `generate` (before any answer: nothing is partial)."""
        http = await self._ensure_started()
        wanted = model or self.model
        body: dict[str, Any] = {
            "input": inputs if isinstance(inputs, str) else list(inputs),
            "encoding_format": "base64",
        }
        if wanted:
            body["model"] = wanted
        failover: Failover[Failure] = Failover(
            self.selector,
            records=self.records.live,
            refresh=self.refresh,
            model=wanted,
            attempts=self.retries + 1,
            capability="embeddings",
        )
        while (node := await failover.next_node()) is not None:
            url = self.url_of(node)
            try:
                with self.selector.track(node.node_id):
                    response = await self._answer(
                        node, http.post(f"{url}/v1/embeddings", json=body)
                    )
                if response.status_code >= 400:
                    raise response_error(response, node.node_id, url)
                vectors = decode_embeddings(response.content)
            except _REQUEST_FAILURES as exc:
                self._failed(failover, node, NodeUnreachable(node.node_id, url, exc))
                continue
            except NodeError as err:
                if not self._failed(failover, node, err):
                    raise
                continue
            failover.succeeded(node)
            return vectors
        raise self._exhausted(failover)

    @staticmethod
    def _parse_result(response: httpx.Response, node_id: str, url: str) -> GenerateResponse:
        if response.status_code >= 400:
            raise response_error(response, node_id, url)
        try:
            return GenerateResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise MalformedAnswer(f"not a GenerateResponse: {exc}") from exc

    async def _stream(self, request: StreamingRequest) -> AsyncGenerator[StreamingChunk, None]:
        http = await self._ensure_started()
        body = request.model_dump(exclude_none=True)
        body[CONTROL_FIELD] = {"token_ids": True}
        failover = self._failover(request)
        got = _Delivered()
        last: tuple[NodeRecord, str, BaseException] | None = None  # the latest break
        while (node := await failover.next_node()) is not None:
            url = self.url_of(node)
            state = _StreamState()
            sent = body if not got.nodes else self._resume_body(body, failover, got)
            try:
                with self.selector.track(node.node_id):
                    events = self._stream_from(http, node, url, sent, state, got)
                    async with contextlib.aclosing(events) as chunks:
                        async for chunk in chunks:
                            yield chunk
                if not state.complete:
                    raise MalformedAnswer("the stream ended without [DONE]")
            except _STREAM_FAILURES as exc:
                failure = _stream_failure(exc, node.node_id, url, state)
                if failure is None:  # whole after all
                    failover.succeeded(node)
                    return
                if not got.chunks:  # nothing delivered yet: plain failover
                    if not self._failed(failover, node, failure):
                        raise failure from None
                    continue
                # tokens were delivered: resume on a node with the same model, or surface it
                if not got.nodes:
                    got.nodes.append(node)
                if isinstance(failure, NodeError) and failure.verdict is Verdict.RAISE:
                    raise self._interrupted(got, failover, node, url, exc) from exc
                self._failed(failover, node, failure)
                if not failover.resume_on_same_model(got.nodes[0]):
                    raise self._interrupted(got, failover, node, url, exc) from exc
                last = (node, url, exc)
                continue
            failover.succeeded(node)
            return
        if got.chunks and last is not None:
            broken_node, broken_url, broken = last
            raise self._interrupted(got, failover, broken_node, broken_url, broken)
        raise self._exhausted(failover)

    @staticmethod
    def _resume_body(
        body: dict[str, Any], failover: Failover[Failure], got: _Delivered
    ) -> dict[str, Any]:
        identity = model_identity(got.nodes[0], failover.model)
        return resume_body(
            body,
            got.token_ids,
            fingerprint=identity[0] if identity else None,
            index=got.next_index,
            deltas=got.deltas,
        )

    @staticmethod
    def _interrupted(
        got: _Delivered, failover: Failover[Failure], node: NodeRecord, url: str, exc: BaseException
    ) -> StreamInterrupted:
        error = exc if isinstance(exc, NodeError) else None
        reason = "" if error else f"{type(exc).__name__}: {exc}"
        return StreamInterrupted(
            node.node_id,
            url,
            got.chunks,
            error=error,
            reason=reason,
            nodes_tried=[r.node_id for r in failover.tried],
        )

    async def _stream_from(
        self,
        http: httpx.AsyncClient,
        node: NodeRecord,
        url: str,
        body: dict[str, Any],
        state: _StreamState,
        got: _Delivered,
    ) -> AsyncGenerator[StreamingChunk, None]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        # a read that waits longer than the stall timeout fails: a live node sends keep-alives
        timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout, read=self.stall_timeout)
        outgoing = http.build_request(
            "POST", f"{url}/generate/stream", json=body, headers=headers, timeout=timeout
        )
        response = await self._answer(node, http.send(outgoing, stream=True))
        try:
            if response.status_code >= 400:
                await response.aread()
                raise response_error(response, node.node_id, url)
            served_by = response.headers.get(NODE_HEADER, node.node_id)
            async for event in EventSource(response).aiter_sse():
                if event.data == "[DONE]":
                    state.complete = True
                    return
                chunk, ids = _parse_chunk(event.data, served_by, url)
                if chunk.finished:
                    state.complete = True  # the answer is whole even if [DONE] never comes
                state.delivered += 1
                got.chunks += 1
                if ids is not None:
                    got.token_ids.extend(ids)
                    got.deltas += 1
                got.next_index = chunk.index + 1
                yield chunk
        finally:
            await response.aclose()


def _stream_failure(exc: Exception, node_id: str, url: str, state: _StreamState) -> Failure | None:
    """What a failed stream means for failover: a failure to record, None if the answer was
    whole after all."""
    if state.complete:
        log.debug("stream from %s ended uncleanly after it finished: %r", url, exc)
        return None
    if isinstance(exc, NodeError):
        return exc
    return NodeUnreachable(node_id, url, exc)


def _parse_chunk(data: str, node_id: str, url: str) -> tuple[StreamingChunk, list[int] | None]:
    """The chunk and the token ids it carried (the internal field, not part of the chunk; None
    for a chunk without the field: not a text or tool-call chunk)."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise MalformedAnswer(f"an event is not JSON: {data[:100]!r}") from exc
    if isinstance(payload, dict) and "error" in payload:
        detail = error_detail(payload, None, json.dumps(payload)[:500])
        raise NodeError(None, detail, node_id=node_id, url=url)
    ids = payload.pop(TOKEN_IDS_FIELD, None) if isinstance(payload, dict) else None
    try:
        chunk = StreamingChunk.model_validate(payload)
        return chunk, [int(i) for i in ids] if isinstance(ids, list) else None
    except (ValidationError, TypeError, ValueError) as exc:
        raise MalformedAnswer(f"not a StreamingChunk: {data[:100]!r}") from exc
