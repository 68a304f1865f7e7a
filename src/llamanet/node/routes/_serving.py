"""What every generation route does around its own wire format: serve here or forward, admit,
stream or run to the end.

A route hands `serve()` a `local(engine)` callback; `serve` runs it when this node has the model
and room, and otherwise (model not here, or the local queue full and a peer known) forwards the
request through the gateway. Admission (`llamanet.node.work`, then `start`) happens before a
response starts, so a full queue or a too-long prompt gets a real HTTP status, never a broken
stream. `stream` and `run` consume the choice events (`llamanet.node.choices`).

A request may carry the internal `llamanet` field (`protocol.StreamControl`): token ids in the
streamed chunks, or the resumption of a stream another node began (`llamanet.swarm.resume`).
A resumption is for one choice (what the resumer resumes), tool calls included (the delivered
tokens are parsed again, `llamanet.node.choices`); it is served here or refused (409
`fingerprint_mismatch` when this node's model is not the one that began it), never forwarded:
the resumer chose this node for its fingerprint.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse

from llamanet.node.choices import ChoiceEnd, ChoiceEvent, choice_events, collect
from llamanet.node.disconnect import unless_disconnected
from llamanet.node.engine import QueueFull
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError, capability_not_served, model_not_found
from llamanet.node.gateway import is_forwarded
from llamanet.node.node import LlamaNetNode
from llamanet.node.streaming import ChunkFormat, event_stream
from llamanet.node.work import Work, submit
from llamanet.protocol import (
    ChoiceFields,
    CompletionRequest,
    ResumeFrom,
    SamplingFields,
    StreamControl,
)

__all__ = [
    "SWARM_ALIAS",
    "LocalHandler",
    "check_resume",
    "needed_capability",
    "node_of",
    "run",
    "serve",
    "sse_response",
    "start",
    "stream",
    "stream_control",
    "wants_token_ids",
]

SWARM_ALIAS = "llamanet"  # the model name that means "any model the swarm serves"

LocalHandler = Callable[[Engine], Awaitable[Response]]


def node_of(request: Request) -> LlamaNetNode:
    """The node this app serves (`create_app` puts it in `app.state`)."""
    node: LlamaNetNode = request.app.state.node
    return node


def _local_engine(request: Request, model: str | None) -> Engine | None:
    """The local engine if it serves `model` (None and the swarm alias mean any model)."""
    engine = node_of(request).engine
    if engine is not None and model in (None, "", SWARM_ALIAS, engine.model_id):
        request.state.model = engine.model_id
        return engine
    request.state.model = model or "-"
    return None


def _loading_here(node: LlamaNetNode, model: str | None) -> bool:
    """This node is still loading `model` (None and the swarm alias: any model)."""
    if not node.loading:
        return False
    loading = node.loading_model_id
    return model in (None, "", SWARM_ALIAS) or loading is None or model == loading


def _model_loading() -> APIError:
    return APIError(
        503, "The model is still loading.", code="model_loading", headers={"Retry-After": "2"}
    )


def _cannot_serve(request: Request, model: str | None) -> APIError:
    node = node_of(request)
    if _loading_here(node, model):
        return _model_loading()
    return model_not_found(model or SWARM_ALIAS, [m.id for m in node.models()])


async def serve(
    request: Request,
    model: str | None,
    max_tokens: int | None,
    local: LocalHandler,
    *,
    capability: str | None = None,
    resume: ResumeFrom | None = None,
) -> Response:
    """Serves locally when this node has the model and room; otherwise forwards to a peer.

    `capability` (e.g. "embeddings"): served here only if this node offers it, forwarded only
    to peers whose record advertises it. `resume`: served here or refused, never forwarded.
    """
    node = node_of(request)
    gateway = node.gateway if not is_forwarded(request) and resume is None else None
    engine = _local_engine(request, model)
    if resume is not None and engine is not None:
        check_resume(node, engine, resume)
    wanted = None if model in (None, "", SWARM_ALIAS) else model  # the alias: any model
    if engine is not None and capability is not None and capability not in node.capabilities():
        if gateway is None:
            raise capability_not_served(capability, engine.model_id)
        return await gateway.forward(
            request, wanted, reason=f"no {capability} here", capability=capability
        )
    if engine is not None:
        try:
            return await local(engine)
        except QueueFull:
            if gateway is None or not gateway.peers():
                raise
            with contextlib.suppress(APIError):
                return await gateway.forward(
                    request,
                    wanted,
                    max_tokens=max_tokens or 0,
                    reason="local queue full",
                    capability=capability,
                )
            raise
    if gateway is None:
        raise _cannot_serve(request, model)
    try:
        return await gateway.forward(
            request,
            wanted,
            max_tokens=max_tokens or 0,
            reason="model not served here",
            capability=capability,
        )
    except APIError as exc:  # no peer has it, but this node will in a moment: a retry works
        if exc.status == 404 and _loading_here(node, model):
            raise _model_loading() from None
        raise


def needed_capability(body: ChoiceFields | CompletionRequest) -> str | None:
    """What a forwarded request needs of the node that serves it, so that it never reaches a
    node that would ignore the field (`node.GENERATION_CAPABILITIES` come together, from one
    version of the node: the first one needed stands for all)."""
    if isinstance(body, CompletionRequest):
        return "logprobs" if body.logprobs is not None else None
    if body.tools:
        return "tools"
    if body.response_format is not None and body.response_format.type != "text":
        return "json_schema"
    if body.logprobs:
        return "logprobs"
    return None


def check_resume(node: LlamaNetNode, engine: Engine, resume: ResumeFrom) -> None:
    """Refuses a resumption this node cannot continue exactly."""
    if node.fingerprint is None or resume.fingerprint != node.fingerprint:
        raise APIError(
            409,
            "This stream began on a different model file than this node's "
            f"(fingerprint {resume.fingerprint!r}, here {node.fingerprint!r}); it cannot be "
            "resumed here.",
            code="fingerprint_mismatch",
            param="llamanet.resume.fingerprint",
        )
    n_vocab = getattr(engine, "n_vocab", None)
    if isinstance(n_vocab, int) and any(t >= n_vocab for t in resume.token_ids):
        raise APIError(
            400,
            f"llamanet.resume.token_ids holds ids outside the model's vocabulary ({n_vocab}).",
            param="llamanet.resume.token_ids",
            code="invalid_token",
        )


def wants_token_ids(control: StreamControl) -> bool:
    """Whether the stream's text chunks carry their token ids (a resumption always does)."""
    return control.token_ids or control.resume is not None


def stream_control(req: SamplingFields, streaming: bool) -> StreamControl:
    """The request's internal `llamanet` field. A resumption continues one stream of one
    choice."""
    control = req.llamanet or StreamControl()
    if control.resume is None:
        return control
    if not streaming:
        raise APIError(
            400,
            "llamanet.resume continues a stream: it needs stream=true.",
            param="llamanet",
            code="unsupported_combination",
        )
    if isinstance(req, ChoiceFields | CompletionRequest) and req.n != 1:
        raise APIError(
            400,
            "llamanet.resume continues one choice: it needs n=1.",
            param="n",
            code="unsupported_combination",
        )
    return control


def start(
    engine: Engine, work: Work, resume: ResumeFrom | None = None
) -> AsyncGenerator[ChoiceEvent, None]:
    """Admits `work` (raising before any response starts) and returns its choice events;
    `resume`: the work continues from the token ids another node generated."""
    jobs = submit(engine, work, resume_tokens=resume.token_ids if resume is not None else ())
    return choice_events(engine, jobs, work, resume)


def _record(request: Request) -> Callable[[ChoiceEnd], None]:
    """Counts each choice's tokens for the access log; the first choice's TTFT for metrics."""
    request.state.tokens = 0

    def on_end(end: ChoiceEnd) -> None:
        request.state.tokens += end.result.completion_tokens
        if end.index == 0:
            node_of(request).metrics.ttft.observe(end.result.ttft_ms / 1000)

    return on_end


def stream(
    request: Request,
    events: AsyncGenerator[ChoiceEvent, None],
    fmt: ChunkFormat,
    include_usage: bool = False,
) -> EventSourceResponse:
    """The request's Server-Sent Events response in the given chunk format, with keep-alive
    comments while no event comes (`Settings.keepalive_interval`)."""
    settings = node_of(request).settings
    body = event_stream(
        events,
        fmt,
        include_usage=include_usage,
        on_end=_record(request),
        timeout=settings.request_timeout,
        keepalive=settings.keepalive_interval,
    )
    return sse_response(body)


def sse_response(body: AsyncIterator[bytes]) -> EventSourceResponse:
    return EventSourceResponse(
        body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def run(request: Request, events: AsyncGenerator[ChoiceEvent, None]) -> list[ChoiceEnd]:
    """Every choice's end, while the client stays (499) and within the timeout (504)."""
    timeout = node_of(request).settings.request_timeout
    ends = await unless_disconnected(request, collect(events), timeout)
    on_end = _record(request)
    for end in ends:
        on_end(end)
    return ends
