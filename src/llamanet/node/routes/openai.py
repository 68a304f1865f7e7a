"""The OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions` (+ `/stream`),
`/v1/completions`.

Handlers only translate between the OpenAI wire format (`protocol`) and the engine work
(`llamanet.node.work`: grammars, tools, logprobs, `n`) and its choice events
(`llamanet.node.choices`); serving here or forwarding, and admission, are `_serving`'s.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamanet.node.choices import ChoiceEnd, chat_completion, total_usage
from llamanet.node.engine_api import Engine
from llamanet.node.logprobs import completion_logprobs
from llamanet.node.routes._openapi import COMMON, JSON_OR_SSE, SSE, error_doc
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
from llamanet.node.streaming import ChatFormat, CompletionFormat
from llamanet.node.work import chat_work, completion_work
from llamanet.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
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
        work = await chat_work(engine, body, body.messages, body.token_budget())
        events = start(engine, work, resume)
        logprobs = bool(body.logprobs)
        if streaming:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            fmt = ChatFormat(
                engine.model_id,
                n=work.n,
                logprobs=logprobs,
                token_ids=wants_token_ids(control),
                resume=resume,
            )
            return stream(request, events, fmt, include_usage)
        ends = await run(request, events)
        completion = chat_completion(engine.model_id, ends, logprobs=logprobs)
        return JSONResponse(completion.model_dump())

    return await serve(
        request,
        body.model,
        body.token_budget(),
        local,
        capability=needed_capability(body),
        resume=resume,
    )


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


def _completion(model: str, body: CompletionRequest, ends: list[ChoiceEnd]) -> Completion:
    echo = body.prompt_text() if body.echo else ""
    return Completion(
        model=model,
        usage=total_usage([end.result for end in ends]),
        choices=[
            CompletionChoice(
                index=end.index,
                text=echo + end.content,
                finish_reason=end.finish_reason,  # type: ignore[arg-type]
                logprobs=None
                if body.logprobs is None
                else completion_logprobs(end.result.logprobs, offset=len(echo)),
            )
            for end in ends
        ],
    )


@router.post("/v1/completions", response_model=Completion, responses=JSON_OR_SSE, tags=["openai"])
async def completions(request: Request, body: CompletionRequest) -> Response:
    """OpenAI (legacy) completions: `n`, `echo`, `logprobs` (top-k), `logit_bias`, streaming."""
    control = stream_control(body, bool(body.stream))
    resume = control.resume

    async def local(engine: Engine) -> Response:
        work = await completion_work(engine, body)
        events = start(engine, work, resume)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            fmt = CompletionFormat(
                engine.model_id,
                n=work.n,
                logprobs=body.logprobs is not None,
                echo=body.prompt_text() if body.echo else None,
                token_ids=wants_token_ids(control),
                resume=resume,
            )
            return stream(request, events, fmt, include_usage)
        ends = await run(request, events)
        return JSONResponse(_completion(engine.model_id, body, ends).model_dump())

    return await serve(
        request,
        body.model,
        body.max_tokens,
        local,
        capability=needed_capability(body),
        resume=resume,
    )
