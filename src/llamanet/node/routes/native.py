"""LlamaNet's native routes: `/generate`, `/generate/stream`, `/status`, `/info`, `/health`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamanet._version import __version__
from llamanet.node.engine import Job
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError
from llamanet.node.routes._openapi import COMMON, ERRORS, SSE, error_doc
from llamanet.node.routes._serving import (
    admit,
    finish_reason,
    node_of,
    run,
    sampling_params,
    serve,
    stream,
    stream_control,
    usage,
)
from llamanet.node.streaming import NativeFormat
from llamanet.protocol import GenerateResponse, NodeInfo, NodeStatus, StreamingRequest

__all__ = ["router"]

router = APIRouter()


async def _admit(engine: Engine, body: StreamingRequest, streaming: bool = False) -> Job:
    params = sampling_params(body, body.max_tokens)
    resume = stream_control(body, streaming).resume
    return await admit(engine, params, prompt=body.prompt, messages=body.messages, resume=resume)


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS, tags=["native"])
async def generate(request: Request, body: StreamingRequest) -> Response:
    stream_control(body, False)  # a resumption needs the stream route

    async def local(engine: Engine) -> Response:
        result = await run(request, engine, await _admit(engine, body))
        response = GenerateResponse(
            text=result.text,
            tokens_generated=result.completion_tokens,
            finish_reason=finish_reason(result),
            usage=usage(result),
            node_id=node_of(request).node_id,
            model=engine.model_id,
            tokens_per_second=round(result.tokens_per_second, 2),
            ttft_ms=round(result.ttft_ms, 2),
            generation_time=round(result.duration_s, 4),
        )
        return JSONResponse(response.model_dump())

    return await serve(request, body.model, body.max_tokens, local)


@router.post("/generate/stream", responses=SSE, response_class=Response, tags=["native"])
async def generate_stream(request: Request, body: StreamingRequest) -> Response:
    """Server-Sent Events of `StreamingChunk`, ending with `data: [DONE]`."""

    control = stream_control(body, True)
    resume = control.resume

    async def local(engine: Engine) -> Response:
        job = await _admit(engine, body, True)
        fmt = NativeFormat(node_of(request).node_id, index=resume.index if resume else 0)
        return stream(request, engine, job, fmt, True, control)

    return await serve(request, body.model, body.max_tokens, local, resume=resume)


@router.get("/status", response_model=NodeStatus, tags=["native"], responses=COMMON)
async def status(request: Request) -> NodeStatus:
    return node_of(request).status()


@router.get("/info", response_model=NodeInfo, tags=["native"], responses=COMMON)
async def info(request: Request) -> NodeInfo:
    return node_of(request).info()


@router.get(
    "/health",
    tags=["native"],
    responses={503: error_doc("The model is loading or failed to load."), "4XX": COMMON["4XX"]},
)
async def health(request: Request) -> dict[str, Any]:
    node = node_of(request)
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
