"""The OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions` (+ `/stream`),
`/v1/completions`.

Handlers only translate between the OpenAI wire format (`protocol`) and the engine; serving
here or forwarding, and admission, are `_serving`'s.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamanet.node.engine_api import Engine
from llamanet.node.routes._openapi import COMMON, JSON_OR_SSE, SSE, error_doc
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
from llamanet.node.streaming import ChatFormat, CompletionFormat
from llamanet.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatResponseMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
)

__all__ = ["router"]

router = APIRouter()


@router.get(
    "/v1/models",
    response_model=ModelList,
    tags=["openai"],
    responses={**COMMON, 400: error_doc("Invalid query parameter.")},
)
async def list_models(request: Request, local: bool = False) -> ModelList:
    """Every model in the swarm, once, with how many nodes serve it (`?local=1`: this
    node's)."""
    node = node_of(request)
    if local or node.gateway is None:
        return ModelList(
            data=[
                ModelCard(
                    id=m.id,
                    created=int(node.started_at),
                    n_ctx=m.n_ctx,
                    capabilities=m.capabilities,
                )
                for m in node.models()
            ]
        )
    swarm = node.gateway.swarm_models()
    served: dict[str, set[str]] = {}  # model id -> what at least one node serves of it
    for m in node.models():  # this node even before its first lookup finished
        swarm.setdefault(m.id, (1, m.n_ctx))
        served.setdefault(m.id, set()).update(m.capabilities)
    for record in node.gateway.records:
        for m in record.models:
            served.setdefault(m.id, set()).update(m.capabilities)
    return ModelList(
        data=[
            ModelCard(
                id=model_id,
                nodes=count,
                n_ctx=n_ctx,
                capabilities=sorted(served.get(model_id, ())),
            )
            for model_id, (count, n_ctx) in sorted(swarm.items())
        ]
    )


async def _chat(request: Request, body: ChatCompletionRequest, streaming: bool) -> Response:
    control = stream_control(body, streaming)
    resume = control.resume

    async def local(engine: Engine) -> Response:
        params = sampling_params(body, body.token_budget())
        job = await admit(engine, params, messages=body.messages, resume=resume)
        if streaming:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            fmt = ChatFormat(
                engine.model_id,
                stream_id=resume.id if resume else None,
                created=resume.created if resume else None,
            )
            return stream(request, engine, job, fmt, include_usage, control)
        result = await run(request, engine, job)
        completion = ChatCompletion(
            model=engine.model_id,
            usage=usage(result),
            choices=[
                ChatChoice(
                    message=ChatResponseMessage(content=result.text),
                    finish_reason=finish_reason(result),
                )
            ],
        )
        return JSONResponse(completion.model_dump())

    return await serve(request, body.model, body.token_budget(), local, resume=resume)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=JSON_OR_SSE,
    tags=["openai"],
)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    """OpenAI chat completions; `stream: true` answers with Server-Sent Events."""
    return await _chat(request, body, body.stream)


@router.post("/v1/chat/completions/stream", responses=SSE, response_class=Response, tags=["openai"])
async def chat_completions_stream(request: Request, body: ChatCompletionRequest) -> Response:
    """Always-streaming chat completions (the chunk format of `stream: true`)."""
    return await _chat(request, body, True)


@router.post("/v1/completions", response_model=Completion, responses=JSON_OR_SSE, tags=["openai"])
async def completions(request: Request, body: CompletionRequest) -> Response:
    control = stream_control(body, bool(body.stream))
    resume = control.resume

    async def local(engine: Engine) -> Response:
        params = sampling_params(body, body.max_tokens)
        job = await admit(engine, params, prompt=body.prompt_text(), resume=resume)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            fmt = CompletionFormat(
                engine.model_id,
                stream_id=resume.id if resume else None,
                created=resume.created if resume else None,
            )
            return stream(request, engine, job, fmt, include_usage, control)
        result = await run(request, engine, job)
        text = body.prompt_text() + result.text if body.echo else result.text
        completion = Completion(
            model=engine.model_id,
            usage=usage(result),
            choices=[CompletionChoice(text=text, finish_reason=finish_reason(result))],
        )
        return JSONResponse(completion.model_dump())

    return await serve(request, body.model, body.max_tokens, local, resume=resume)
