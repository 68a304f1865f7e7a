"""LlamaNet's native routes: `/generate`, `/generate/stream`, `/status`, `/info`, `/health`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamanet._version import __version__
from llamanet.node.choices import ChoiceEnd, total_usage
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError
from llamanet.node.logprobs import chat_logprob_items
from llamanet.node.routes._openapi import COMMON, ERRORS, SSE, error_doc
from llamanet.node.routes._serving import (
    needed_capability,
    node_of,
    run,
    serve,
    start,
    stream,
    stream_control,
    wants_token_ids,
)
from llamanet.node.streaming import NativeFormat
from llamanet.node.work import Work, chat_work, prompt_work
from llamanet.protocol import (
    ChatTokenLogprob,
    GenerateResponse,
    NativeChoice,
    NodeInfo,
    NodeStatus,
    StreamingRequest,
)

__all__ = ["router"]

router = APIRouter()


async def _work(engine: Engine, body: StreamingRequest) -> Work:
    if body.messages is not None:
        return await chat_work(engine, body, body.messages, body.max_tokens)
    return await prompt_work(engine, body, body.prompt or "", body.max_tokens)


def _logprobs(body: StreamingRequest, end: ChoiceEnd) -> list[ChatTokenLogprob] | None:
    return chat_logprob_items(end.result.logprobs) if body.logprobs else None


def _response(
    node_id: str, model: str, body: StreamingRequest, ends: list[ChoiceEnd]
) -> GenerateResponse:
    first = ends[0]
    result = first.result
    choices = [
        NativeChoice(
            index=end.index,
            text=end.content,
            finish_reason=end.finish_reason,  # type: ignore[arg-type]
            tokens_generated=end.result.completion_tokens,
            tool_calls=end.calls or None,
            logprobs=_logprobs(body, end),
        )
        for end in ends
    ]
    return GenerateResponse(
        text=first.content,
        tokens_generated=result.completion_tokens,
        finish_reason=first.finish_reason,  # type: ignore[arg-type]
        usage=total_usage([end.result for end in ends]),
        node_id=node_id,
        model=model,
        tokens_per_second=round(result.tokens_per_second, 2),
        ttft_ms=round(result.ttft_ms, 2),
        generation_time=round(max(end.result.duration_s for end in ends), 4),
        tool_calls=first.calls or None,
        logprobs=_logprobs(body, first),
        choices=choices if len(ends) > 1 else None,
    )


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS, tags=["native"])
async def generate(request: Request, body: StreamingRequest) -> Response:
    """One answer (or `n`) to a prompt or chat messages, with the chat API's answer-shaping
    fields (`response_format`, `tools`, `logprobs`, `logit_bias`, `n`)."""
    stream_control(body, False)  # a resumption needs the stream route

    async def local(engine: Engine) -> Response:
        work = await _work(engine, body)
        ends = await run(request, start(engine, work))
        response = _response(node_of(request).node_id, engine.model_id, body, ends)
        return JSONResponse(response.model_dump(exclude_none=True))

    return await serve(
        request, body.model, body.max_tokens, local, capability=needed_capability(body)
    )


@router.post("/generate/stream", responses=SSE, response_class=Response, tags=["native"])
async def generate_stream(request: Request, body: StreamingRequest) -> Response:
    """Server-Sent Events of `StreamingChunk`, ending with `data: [DONE]`."""
    control = stream_control(body, True)
    resume = control.resume

    async def local(engine: Engine) -> Response:
        work = await _work(engine, body)
        events = start(engine, work, resume)
        fmt = NativeFormat(
            node_of(request).node_id,
            n=work.n,
            logprobs=bool(body.logprobs),
            token_ids=wants_token_ids(control),
            resume=resume,
        )
        return stream(request, events, fmt)

    return await serve(
        request,
        body.model,
        body.max_tokens,
        local,
        capability=needed_capability(body),
        resume=resume,
    )


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
