"""The swarm as this node sees it: `/nodes`, `/nodes/{node_id}`, `/dht/status`, and `/metrics`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llamanet.node.errors import APIError
from llamanet.node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llamanet.node.routes._openapi import COMMON, METRICS, error_doc
from llamanet.node.routes._serving import node_of
from llamanet.protocol import NodeList, NodeRecord

__all__ = ["router"]

router = APIRouter()


@router.get("/nodes", response_model=NodeList, tags=["swarm"], responses=COMMON)
async def nodes(request: Request, model: str | None = None) -> NodeList:
    """Live node records found through the DHT (this node included)."""
    node = node_of(request)
    cached = node.gateway.recent() if node.gateway is not None and model is None else None
    if cached is not None:  # refreshed in the background: no DHT lookup per UI poll
        return NodeList(nodes=cached)
    return NodeList(nodes=await node.find_nodes(model))


@router.get(
    "/nodes/{node_id}",
    response_model=NodeRecord,
    tags=["swarm"],
    responses={**COMMON, 404: error_doc("No live node with that id.")},
)
async def node_record(request: Request, node_id: str) -> NodeRecord:
    for record in await node_of(request).find_nodes():
        if record.node_id == node_id:
            return record
    raise APIError(
        404, f"No live node with id '{node_id}'.", param="node_id", code="node_not_found"
    )


@router.get("/dht/status", tags=["swarm"], responses=COMMON)
async def dht_status(request: Request) -> dict[str, Any]:
    return node_of(request).dht_status()


@router.get("/metrics", tags=["native"], response_class=Response, responses=METRICS)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(node_of(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)
