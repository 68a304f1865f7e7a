"""The node's pure ASGI middleware (streaming-safe: none of them buffers a response).

`RequestLog` adds the node header to every response, logs one line and observes the request
metrics; `RequestGuard` enforces JSON bodies, the size limit and the body deadline; `WebUI` serves
the static UI at `/` and answers what the mount would otherwise get wrong (a wrong method on an
API path). `access.AccessControl` (keys, swarm proof, limits) sits between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamanet.node.errors import APIError, unknown_endpoint
from llamanet.node.metrics import Metrics
from llamanet.protocol import NODE_HEADER

__all__ = ["RequestGuard", "RequestLog", "WebUI"]

log = logging.getLogger("llamanet.http")


class RequestLog:
    """Pure ASGI middleware (streaming-safe): adds the node header, logs one line per request."""

    def __init__(
        self, app: ASGIApp, *, node_id: str, metrics: Metrics, endpoints: set[str]
    ) -> None:
        self.app = app
        self.header = (NODE_HEADER.lower().encode(), node_id.encode())
        self.node_short = node_id[:12]
        self.metrics = metrics
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
            status = state.get("failed_status", status)  # a stream that broke after its head
            path, seconds = scope["path"], time.perf_counter() - started
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
    """The static web UI mounted at `/`, and the answers the mount would otherwise get wrong.

    The mount catches every path no API route takes in full. An API path asked with a method it
    does not take gets an OpenAI-shaped 405 with `Allow` (not the mount's 404 or `Allow: GET`);
    any other method than GET/HEAD on a path that is not an API route is an unknown endpoint,
    a 404 (`POST /v1/embeddings` must not look like an endpoint that exists).
    """

    def __init__(self, api_routes: Sequence[APIRoute], directory: Path) -> None:
        self.routes = list(api_routes)
        self.files = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                if route.matches(scope)[0] == Match.PARTIAL:  # the path, not the method
                    allow = ", ".join(sorted(route.methods or ()))
                    error = APIError(
                        405,
                        f"{scope['method']} is not allowed on {scope['path']}; use {allow}.",
                        code="method_not_allowed",
                        headers={"Allow": allow},
                    )
                    await error.response()(scope, receive, send)
                    return
            if scope["method"] not in ("GET", "HEAD"):
                await unknown_endpoint().response()(scope, receive, send)
                return
        await self.files(scope, receive, send)
