"""The node's ASGI app: `create_app(node)` assembles routers, error handlers, middleware, web UI.

The routes live in `routes/` (one `APIRouter` per family), the middleware in `middleware.py` and
`access.py`, the error shape in `errors.py`; this module only puts them together, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute

from llamanet._version import __version__
from llamanet.node.access import AccessControl
from llamanet.node.errors import install_error_handlers
from llamanet.node.middleware import RequestGuard, RequestLog, WebUI
from llamanet.node.node import LlamaNetNode
from llamanet.node.responses import ResponseStore
from llamanet.node.routes import embeddings, native, openai, responses, swarm

__all__ = ["WEB_DIR", "create_app"]

WEB_DIR = Path(__file__).parent.parent / "web"  # llamanet/web, the static UI
# no prefixes: their paths are the app's
_ROUTERS = (openai.router, responses.router, embeddings.router, native.router, swarm.router)


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
    app.state.responses = ResponseStore()  # previous_response_id: this node's answers
    install_error_handlers(app)
    for router in _ROUTERS:
        app.include_router(router)
    # read from the routers: FastAPI keeps included routers as (lazy) branches of `app.routes`
    api_routes = [r for router in _ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    api_paths = {route.path for route in api_routes}
    endpoints = set(api_paths)
    if WEB_DIR.is_dir():
        app.mount("/", WebUI(api_routes, WEB_DIR), name="web")
        endpoints.add("/")
    s = node.settings
    # added innermost first: a request meets RequestLog, AccessControl, RequestGuard, the app
    app.add_middleware(RequestGuard, max_body_size=s.max_body_size, body_timeout=s.request_timeout)
    app.add_middleware(
        AccessControl,
        api_paths=api_paths,
        api_keys=s.api_key,
        swarm_key=s.swarm_key,
        rate_limit=s.rate_limit,
        max_streams=s.max_streams,
    )
    app.add_middleware(RequestLog, node_id=node.node_id, metrics=node.metrics, endpoints=endpoints)
    return app
