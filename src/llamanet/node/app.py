"""The node's HTTP API: OpenAI-compatible routes, native routes, status, and the web UI.

Routes only translate between the wire formats (`protocol`) and the engine; admission (queue,
context length) happens before a response starts, so those failures get real HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamanet._version import __version__
from llamanet.node.access import AccessControl
from llamanet.node.disconnect import unless_disconnected
from llamanet.node.engine import GenerationResult, Job, LlamaEngine, QueueFull, SamplingParams
from llamanet.node.errors import APIError, install_error_handlers, model_not_found
from llamanet.node.gateway import is_forwarded
from llamanet.node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llamanet.node.node import LlamaNetNode
from llamanet.node.streaming import (
    ChatFormat,
    ChunkFormat,
    CompletionFormat,
    NativeFormat,
    event_stream,
    usage_of,
)
from llamanet.protocol import (
    NODE_HEADER,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    ChatResponseMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    GenerateResponse,
    ModelCard,
    ModelList,
    NodeInfo,
    NodeList,
    NodeRecord,
    NodeStatus,
    SamplingFields,
    StreamingRequest,
)

log = logging.getLogger("llamanet.http")

SWARM_ALIAS = "llamanet"
WEB_DIR = Path(__file__).parent / "web"


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        doc["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer"},
            }
        }
    return doc


# Every error has the OpenAI shape (`errors.py`), and invalid input is a 400, never FastAPI's 422:
# "4XX" documents the rarer client errors (405, ...) and keeps FastAPI from adding a 422.
_COMMON: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or invalid API key (a node started with `--api-key`)."),
    "4XX": _error("Any other client error."),
}
_ERRORS: dict[int | str, dict[str, Any]] = {  # the generation routes
    **_COMMON,
    400: _error(
        "Invalid request: malformed JSON, a wrong type or value, or a prompt plus "
        "max_tokens beyond the model's context length."
    ),
    403: _error("A forwarded request without a valid private-swarm proof."),
    404: _error("No node in the swarm serves the model."),
    413: _error("The body is larger than the node's limit."),
    415: _error("The body is not JSON."),
    429: _error("A per-client rate or concurrency limit was reached.", retry_after=True),
    500: _error("The generation failed."),
    502: _error("The peer node the request was forwarded to failed."),
    503: _error("The queue is full, the model is loading, or no node has room.", retry_after=True),
    504: _error("The request ran longer than the node's request timeout."),
}
_SSE_EVENTS: dict[str, Any] = {
    "description": "Server-Sent Events: one JSON chunk per event (`chat.completion.chunk`, "
    "`text_completion` or the native `StreamingChunk`), the last one with a "
    "`finish_reason`, then `data: [DONE]`; a failure after the start is one "
    '`{"error": {...}}` event and the end of the stream.',
    "itemSchema": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "string"},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    },
}
# Streaming routes return an `EventSourceResponse` themselves (admission must be able to fail with
# a real status first), so their 200 is documented here rather than through response_class.
_SSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": _SSE_EVENTS}},
    **_ERRORS,
}
_JSON_OR_SSE: dict[int | str, dict[str, Any]] = {  # `stream: true` answers with events
    200: {
        "description": "The completion, or Server-Sent Events with `stream: true`",
        "content": {"text/event-stream": _SSE_EVENTS},
    },
    **_ERRORS,
}


class RequestLog:
    """Pure ASGI middleware (streaming-safe): adds the node header, logs one line per request."""

    def __init__(self, app: ASGIApp, node: LlamaNetNode, endpoints: set[str]) -> None:
        self.app = app
        self.header = (NODE_HEADER.lower().encode(), node.node_id.encode())
        self.node_short = node.node_id[:12]
        self.metrics = node.metrics
        self.endpoints = endpoints  # metric labels: known paths only, so cardinality stays bounded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        state = scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(k == self.header[0] for k, _ in headers):
                    headers.append(self.header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path, seconds = scope["path"], time.perf_counter() - started
            status = state.get("failed_status", status)  # a stream that broke after its head
            endpoint = path if path in self.endpoints else "other"
            self.metrics.observe_request(endpoint, status or 499, seconds)
            if path not in ("/health", "/metrics", "/status", "/nodes") or status >= 400:
                log.info(
                    "%s %s model=%s node=%s status=%s tokens=%s %.1fms",
                    scope["method"],
                    path,
                    state.get("model", "-"),
                    state.get("served_by", self.node_short),
                    status or "disconnected",
                    state.get("tokens", "-"),
                    seconds * 1000,
                )


class RequestGuard:
    """Pure ASGI middleware: POST bodies must be JSON, under the size limit and arrive in time
    (415 / 413 / 408).

    The limit is checked on Content-Length up front and on the bytes actually received (chunked
    uploads); a body still incomplete after `body_timeout` seconds (a client trickling it, slow
    loris) is answered 408 and its connection closed. The errors are OpenAI-shaped like every other.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_size: int,
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"content-type" not in headers:  # a JSON body without a type: read it as JSON
            scope = {
                **scope,
                "headers": [*scope["headers"], (b"content-type", b"application/json")],
            }
        ctype = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if ctype not in (b"application/json", b""):
            await APIError(
                415,
                f"Unsupported content type '{ctype.decode(errors='replace')}': "
                "send the body as JSON with 'Content-Type: application/json'.",
                code="unsupported_media_type",
            ).response()(scope, receive, send)
            return
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body_size:
            await self._too_large().response()(scope, receive, send)
            return
        received = 0
        deadline = (
            asyncio.get_running_loop().time() + self.body_timeout if self.body_timeout else None
        )

        async def limited_receive() -> Message:
            nonlocal received, deadline
            if deadline is None:  # the body is complete: later reads only watch for disconnects
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise StarletteHTTPException(
                        408,
                        "The request body did not arrive within the node's request timeout.",
                        headers={"Connection": "close"},
                    ) from None
            if message["type"] == "http.request" and not message.get("more_body", False):
                deadline = None
            received += len(message.get("body", b""))
            if received > self.max_body_size:
                raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than {self.max_body_size} bytes.",
            code="request_too_large",
        )


class WebUI:
    """The static web UI mounted at `/`; an API path asked with a method it does not take gets an
    OpenAI-shaped 405 with `Allow` (the mount would otherwise catch it: a 404, or `Allow: GET`)."""

    def __init__(self, app: FastAPI, directory: Path) -> None:
        self.routes = [route for route in app.routes if isinstance(route, APIRoute)]
        self.files = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                if route.matches(scope)[0] == Match.PARTIAL:  # the path, not the method
                    allow = ", ".join(sorted(route.methods))
                    error = APIError(
                        405,
                        f"{scope['method']} is not allowed on {scope['path']}; use {allow}.",
                        code="method_not_allowed",
                        headers={"Allow": allow},
                    )
                    await error.response()(scope, receive, send)
                    return
        await self.files(scope, receive, send)


# ---------------------------------------------------------------------- helpers


def _node(request: Request) -> LlamaNetNode:
    return request.app.state.node


def _local_engine(request: Request, model: str | None) -> LlamaEngine | None:
    """The local engine if it serves `model` (None and the swarm alias mean any model)."""
    engine = _node(request).engine
    if engine is not None and model in (None, "", SWARM_ALIAS, engine.model_id):
        request.state.model = engine.model_id
        return engine
    request.state.model = model or "-"
    return None


def _cannot_serve(request: Request, model: str | None) -> APIError:
    node = _node(request)
    if node.engine is None and not node.settings.no_model and node.load_error is None:
        return APIError(
            503, "The model is still loading.", code="model_loading", headers={"Retry-After": "2"}
        )
    return model_not_found(model or SWARM_ALIAS, [m.id for m in node.models()])


LocalHandler = Callable[[LlamaEngine], Awaitable[Response]]


async def _serve(
    request: Request, model: str | None, max_tokens: int | None, local: LocalHandler
) -> Response:
    """Serves locally when this node has the model and room; otherwise forwards to a peer."""
    node = _node(request)
    gateway = node.gateway if not is_forwarded(request) else None
    engine = _local_engine(request, model)
    wanted = None if model in (None, "", SWARM_ALIAS) else model  # the alias: any model
    if engine is not None:
        try:
            return await local(engine)
        except QueueFull:
            if gateway is None or not gateway.peers():
                raise
            with contextlib.suppress(APIError):
                return await gateway.forward(
                    request, wanted, max_tokens=max_tokens or 0, reason="local queue full"
                )
            raise
    if gateway is None:
        raise _cannot_serve(request, model)
    return await gateway.forward(
        request, wanted, max_tokens=max_tokens or 0, reason="model not served here"
    )


def _sampling(req: SamplingFields, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repeat_penalty=req.repeat_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=tuple(req.stop_list()),
    )


def _messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text()} for m in messages]


async def _admit(
    engine: LlamaEngine,
    params: SamplingParams,
    *,
    prompt: str | None = None,
    messages: list[ChatMessage] | None = None,
) -> Job:
    if messages is not None:
        tokens = await engine.tokenize(messages=_messages(messages))
    else:
        tokens = await engine.tokenize(prompt=prompt or "")
    return engine.submit(tokens, params)


def _record(request: Request) -> Callable[[GenerationResult], None]:
    def on_result(result: GenerationResult) -> None:
        request.state.tokens = result.completion_tokens
        _node(request).metrics.ttft.observe(result.ttft_ms / 1000)

    return on_result


def _sse(request: Request, body: AsyncIterator[bytes]) -> EventSourceResponse:
    return EventSourceResponse(
        body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _stream(
    request: Request, engine: LlamaEngine, job: Job, fmt: ChunkFormat, include_usage: bool
) -> EventSourceResponse:
    body = event_stream(
        engine,
        job,
        fmt,
        include_usage=include_usage,
        on_result=_record(request),
        timeout=_node(request).settings.request_timeout,
    )
    return _sse(request, body)


async def _run(request: Request, engine: LlamaEngine, job: Job) -> GenerationResult:
    timeout = _node(request).settings.request_timeout
    result = await unless_disconnected(request, engine.run(job), timeout)
    _record(request)(result)
    return result


# ---------------------------------------------------------------------- routes


def _add_openai_routes(app: FastAPI) -> None:
    @app.get(
        "/v1/models",
        response_model=ModelList,
        tags=["openai"],
        responses={**_COMMON, 400: _error("Invalid query parameter.")},
    )
    async def list_models(request: Request, local: bool = False) -> ModelList:
        """Every model in the swarm, once, with how many nodes serve it (`?local=1`: this
        node's)."""
        node = _node(request)
        if local or node.gateway is None:
            return ModelList(
                data=[
                    ModelCard(id=m.id, created=int(node.started_at), n_ctx=m.n_ctx)
                    for m in node.models()
                ]
            )
        swarm = node.gateway.swarm_models()
        for m in node.models():  # this node even before its first lookup finished
            swarm.setdefault(m.id, (1, m.n_ctx))
        return ModelList(
            data=[
                ModelCard(id=model_id, nodes=count, n_ctx=n_ctx)
                for model_id, (count, n_ctx) in sorted(swarm.items())
            ]
        )

    async def chat(request: Request, body: ChatCompletionRequest, stream: bool) -> Response:
        async def local(engine: LlamaEngine) -> Response:
            job = await _admit(engine, _sampling(body, body.token_budget()), messages=body.messages)
            if stream:
                usage = bool(body.stream_options and body.stream_options.include_usage)
                return _stream(request, engine, job, ChatFormat(engine.model_id), usage)
            result = await _run(request, engine, job)
            completion = ChatCompletion(
                model=engine.model_id,
                usage=usage_of(result),
                choices=[
                    ChatChoice(
                        message=ChatResponseMessage(content=result.text),
                        finish_reason=result.finish_reason,
                    )
                ],
            )
            return JSONResponse(completion.model_dump())

        return await _serve(request, body.model, body.token_budget(), local)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=_JSON_OR_SSE,
        tags=["openai"],
    )
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        """OpenAI chat completions; `stream: true` answers with Server-Sent Events."""
        return await chat(request, body, body.stream)

    @app.post(
        "/v1/chat/completions/stream", responses=_SSE, response_class=Response, tags=["openai"]
    )
    async def chat_completions_stream(request: Request, body: ChatCompletionRequest) -> Response:
        """Always-streaming chat completions (the chunk format of `stream: true`)."""
        return await chat(request, body, True)

    @app.post("/v1/completions", response_model=Completion, responses=_JSON_OR_SSE, tags=["openai"])
    async def completions(request: Request, body: CompletionRequest) -> Response:
        async def local(engine: LlamaEngine) -> Response:
            job = await _admit(engine, _sampling(body, body.max_tokens), prompt=body.prompt_text())
            if body.stream:
                usage = bool(body.stream_options and body.stream_options.include_usage)
                return _stream(request, engine, job, CompletionFormat(engine.model_id), usage)
            result = await _run(request, engine, job)
            text = body.prompt_text() + result.text if body.echo else result.text
            completion = Completion(
                model=engine.model_id,
                usage=usage_of(result),
                choices=[CompletionChoice(text=text, finish_reason=result.finish_reason)],
            )
            return JSONResponse(completion.model_dump())

        return await _serve(request, body.model, body.max_tokens, local)


def _add_native_routes(app: FastAPI) -> None:
    async def admit_native(engine: LlamaEngine, body: StreamingRequest) -> Job:
        return await _admit(
            engine, _sampling(body, body.max_tokens), prompt=body.prompt, messages=body.messages
        )

    @app.post("/generate", response_model=GenerateResponse, responses=_ERRORS, tags=["native"])
    async def generate(request: Request, body: StreamingRequest) -> Response:
        async def local(engine: LlamaEngine) -> Response:
            result = await _run(request, engine, await admit_native(engine, body))
            response = GenerateResponse(
                text=result.text,
                tokens_generated=result.completion_tokens,
                finish_reason=result.finish_reason,
                usage=usage_of(result),
                node_id=_node(request).node_id,
                model=engine.model_id,
                tokens_per_second=round(result.tokens_per_second, 2),
                ttft_ms=round(result.ttft_ms, 2),
                generation_time=round(result.duration_s, 4),
            )
            return JSONResponse(response.model_dump())

        return await _serve(request, body.model, body.max_tokens, local)

    @app.post("/generate/stream", responses=_SSE, response_class=Response, tags=["native"])
    async def generate_stream(request: Request, body: StreamingRequest) -> Response:
        """Server-Sent Events of `StreamingChunk`, ending with `data: [DONE]`."""

        async def local(engine: LlamaEngine) -> Response:
            job = await admit_native(engine, body)
            return _stream(request, engine, job, NativeFormat(_node(request).node_id), True)

        return await _serve(request, body.model, body.max_tokens, local)

    @app.get("/status", response_model=NodeStatus, tags=["native"], responses=_COMMON)
    async def status(request: Request) -> NodeStatus:
        return _node(request).status()

    @app.get("/info", response_model=NodeInfo, tags=["native"], responses=_COMMON)
    async def info(request: Request) -> NodeInfo:
        return _node(request).info()

    @app.get(
        "/health",
        tags=["native"],
        responses={503: _error("The model is loading or failed to load."), "4XX": _COMMON["4XX"]},
    )
    async def health(request: Request) -> dict[str, Any]:
        node = _node(request)
        if node.load_error is not None:
            raise APIError(
                503, f"The model failed to load: {node.load_error}", code="model_load_failed"
            )
        if not node.ready:
            raise APIError(
                503,
                "The model is still loading.",
                code="model_loading",
                headers={"Retry-After": "2"},
            )
        return {"status": "ok", "node_id": node.node_id, "version": __version__}

    @app.get("/nodes", response_model=NodeList, tags=["swarm"], responses=_COMMON)
    async def nodes(request: Request, model: str | None = None) -> NodeList:
        """Live node records found through the DHT (this node included)."""
        node = _node(request)
        cached = node.gateway.recent() if node.gateway is not None and model is None else None
        if cached is not None:  # refreshed in the background: no DHT lookup per UI poll
            return NodeList(nodes=cached)
        return NodeList(nodes=await node.find_nodes(model))

    @app.get(
        "/nodes/{node_id}",
        response_model=NodeRecord,
        tags=["swarm"],
        responses={**_COMMON, 404: _error("No live node with that id.")},
    )
    async def node_record(request: Request, node_id: str) -> NodeRecord:
        for record in await _node(request).find_nodes():
            if record.node_id == node_id:
                return record
        raise APIError(
            404, f"No live node with id '{node_id}'.", param="node_id", code="node_not_found"
        )

    @app.get("/dht/status", tags=["swarm"], responses=_COMMON)
    async def dht_status(request: Request) -> dict[str, Any]:
        node = _node(request)
        if node.presence is not None:
            return node.presence.status()
        if node.dht is not None:
            return node.dht.status()
        return {"node_id": node.node_id, "enabled": False}


def create_app(node: LlamaNetNode) -> FastAPI:
    """The ASGI app of one node; its lifespan starts and stops the node."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="LlamaNet node",
        version=__version__,
        lifespan=lifespan,
        description="OpenAI-compatible and native inference API of one LlamaNet node.",
    )
    app.state.node = node
    install_error_handlers(app)
    _add_openai_routes(app)
    _add_native_routes(app)

    @app.get(
        "/metrics",
        tags=["native"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_COMMON,
        },
    )
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(node.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    api_paths = {route.path for route in app.routes if isinstance(route, APIRoute)}
    endpoints = set(api_paths)
    if WEB_DIR.is_dir():
        app.mount("/", WebUI(app, WEB_DIR), name="web")
        endpoints.add("/")
    s = node.settings
    app.add_middleware(RequestGuard, max_body_size=s.max_body_size, body_timeout=s.request_timeout)
    app.add_middleware(
        AccessControl,
        api_paths=api_paths,
        api_keys=s.api_key,
        swarm_key=s.swarm_key,
        rate_limit=s.rate_limit,
        max_streams=s.max_streams,
    )
    app.add_middleware(RequestLog, node=node, endpoints=endpoints)
    return app
