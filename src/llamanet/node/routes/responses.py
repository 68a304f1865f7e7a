"""The OpenAI Responses API: `POST /v1/responses`, `GET /v1/responses/{id}`.

A Responses request is served by the chat path: `responses.to_chat` makes the chat request
(continuing a stored conversation for `previous_response_id`), `work.chat_work` and the choice
events run it, and `responses.from_chat` / `ResponseStreamTranslator` give the Response object or
the Responses event sequence (`response.created` ... `response.completed`). Finished responses
go to the node's `ResponseStore` (`app.state.responses`) unless `store: false`.
`max_tool_calls` keeps the first calls and drops the rest, as OpenAI documents; 1 asks the model
for a single call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamanet.node.choices import (
    ChoiceCall,
    ChoiceEvent,
    ChoiceText,
    chat_completion,
    total_usage,
)
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError, stream_error_body
from llamanet.node.logprobs import responses_logprobs
from llamanet.node.responses import (
    ResponseStore,
    ResponseStreamTranslator,
    ResponsesTurn,
    from_chat,
    sse_event,
    to_chat,
)
from llamanet.node.routes._openapi import COMMON, JSON_OR_SSE, error_doc
from llamanet.node.routes._serving import node_of, run, serve, sse_response, start
from llamanet.node.work import chat_work
from llamanet.protocol import ResponseFunctionCall, ResponseObject, ResponsesRequest

__all__ = ["router"]

router = APIRouter()
CAPABILITY = "responses"  # forwarded only to nodes with this route (`node.GENERATION_CAPABILITIES`)


def store_of(request: Request) -> ResponseStore:
    """The node's store of finished responses (`create_app` puts one in `app.state`)."""
    store: ResponseStore = request.app.state.responses
    return store


def _limit_calls(response: ResponseObject, limit: int | None) -> None:
    if limit is None:
        return
    calls = 0
    kept = []
    for item in response.output:
        if isinstance(item, ResponseFunctionCall):
            calls += 1
            if calls > limit:
                continue
        kept.append(item)
    response.output = kept


async def _events(
    request: Request,
    turn: ResponsesTurn,
    model: str,
    events: AsyncGenerator[ChoiceEvent, None],
) -> AsyncIterator[bytes]:
    """The Responses event sequence of one streamed turn; the response is stored at its end."""
    body = turn.request
    translator = ResponseStreamTranslator(body, model=model)
    limit = body.max_tool_calls
    for event in translator.start():
        yield sse_event(event)
    timeout = node_of(request).settings.request_timeout
    try:
        async with contextlib.aclosing(events), asyncio.timeout(timeout):
            async for item in events:
                if isinstance(item, ChoiceText):
                    out = translator.text(item.text, responses_logprobs(item.logprobs))
                elif isinstance(item, ChoiceCall):
                    if limit is not None and item.delta.index >= limit:
                        continue
                    out = translator.tool_call(item.delta)
                else:
                    request.state.tokens = item.result.completion_tokens
                    node_of(request).metrics.ttft.observe(item.result.ttft_ms / 1000)
                    usage = total_usage([item.result])
                    out = translator.finish(item.finish_reason, usage)
                    store_of(request).put(turn, translator.response)
                for event in out:
                    yield sse_event(event)
    except Exception as exc:  # surfaced as the stream's last event, never a silent truncation
        for event in translator.error(stream_error_body(exc)):
            yield sse_event(event)


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses=JSON_OR_SSE,
    tags=["openai"],
)
async def create_response(request: Request, body: ResponsesRequest) -> Response:
    """OpenAI Responses API; `stream: true` answers with the Responses event sequence.

    The node that serves the model answers (a forwarded request is relayed as it is), so
    `previous_response_id` is looked up where the model runs."""

    async def local(engine: Engine) -> Response:
        turn = to_chat(body, store_of(request))
        chat = turn.chat
        if body.max_tool_calls == 1:
            chat = chat.model_copy(update={"parallel_tool_calls": False})
        work = await chat_work(engine, chat, chat.messages, chat.token_budget())
        events = start(engine, work)
        if body.stream:
            return sse_response(_events(request, turn, engine.model_id, events))
        ends = await run(request, events)
        completion = chat_completion(engine.model_id, ends, logprobs=bool(chat.logprobs))
        response = from_chat(body, completion)
        _limit_calls(response, body.max_tool_calls)
        store_of(request).put(turn, response)
        return JSONResponse(response.model_dump(mode="json"))

    return await serve(request, body.model, body.max_output_tokens, local, capability=CAPABILITY)


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    tags=["openai"],
    responses={**COMMON, 404: error_doc("No stored response has this id.")},
)
async def get_response(request: Request, response_id: str) -> ResponseObject:
    """A response this node stored (the last few hundred; see `ResponseStore`)."""
    stored = store_of(request).get(response_id)
    if stored is None:
        raise APIError(
            404,
            f"No response with id '{response_id}' is stored on this node.",
            param="response_id",
            code="not_found",
        )
    return stored.response
