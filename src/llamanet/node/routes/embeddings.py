"""`POST /v1/embeddings`: OpenAI's embeddings endpoint, served here or forwarded.

The handler translates between the OpenAI wire format and the node's `EmbeddingService`; where
it runs is `_serving.serve`'s decision, with the "embeddings" capability: a node without it
(no model, or `--no-embeddings`) forwards only to peers whose record advertises it.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llamanet.node.disconnect import unless_disconnected
from llamanet.node.embeddings import (
    EmbeddingFailed,
    EmbeddingInputError,
    Embeddings,
    encode_vector,
)
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError
from llamanet.node.routes._openapi import ERRORS, error_doc
from llamanet.node.routes._serving import node_of, serve
from llamanet.protocol import (
    MAX_EMBEDDING_INPUTS,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)

__all__ = ["CAPABILITY", "render", "router"]

CAPABILITY = "embeddings"

router = APIRouter()


def render(result: Embeddings, encoding_format: Literal["float", "base64"], model: str) -> bytes:
    """The OpenAI response body (JSON bytes); big enough to be built off the event loop."""
    body = EmbeddingList(
        model=model,
        data=[
            Embedding(index=i, embedding=encode_vector(vector, encoding_format))
            for i, vector in enumerate(result.vectors)
        ],
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )
    return body.model_dump_json().encode()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingList,
    tags=["openai"],
    responses={
        **ERRORS,
        400: error_doc(
            "Invalid request: malformed JSON, a wrong type or value, an empty input, more than "
            f"{MAX_EMBEDDING_INPUTS} inputs, an input longer than the model's context, a token "
            "id outside its vocabulary, or `dimensions` other than the model's own."
        ),
        404: error_doc("No node in the swarm serves embeddings for the model."),
        500: error_doc("The embedding failed."),
    },
)
async def create_embeddings(request: Request, body: EmbeddingRequest) -> Response:
    """Mean-pooled, L2-normalised vectors of the inputs from the node's model; `encoding_format`
    `float` or `base64` (little-endian float32); `dimensions` only as the model's own size."""

    async def local(engine: Engine) -> Response:
        node = node_of(request)
        service = node.embeddings
        assert service is not None  # `serve` checked the capability
        work = service.embed(body.inputs(), dimensions=body.dimensions)
        try:
            result = await unless_disconnected(request, work, node.settings.request_timeout)
        except EmbeddingInputError as exc:
            raise APIError(400, exc.message, param=exc.param, code=exc.code) from exc
        except EmbeddingFailed as exc:
            raise APIError(500, str(exc), type="server_error", code="embedding_failed") from exc
        request.state.tokens = result.prompt_tokens
        content = await asyncio.to_thread(render, result, body.encoding_format, engine.model_id)
        return Response(content, media_type="application/json")

    return await serve(request, body.model, None, local, capability=CAPABILITY)
