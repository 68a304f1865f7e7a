"""What every generation route does around its own wire format: serve here or forward, admit.

A route hands `serve()` a `local(engine)` callback; `serve` runs it when this node has the model
and room, and otherwise (model not here, or the local queue full and a peer known) forwards the
request through the gateway. Admission (tokenize + `engine.submit`) happens before a response
starts, so a full queue or a too-long prompt gets a real HTTP status, never a broken stream.

A request may carry the internal `llamanet` field (`protocol.StreamControl`): token ids in the
streamed chunks, or the resumption of a stream another node began (`llamanet.swarm.resume`).
A resumption is served here or refused (409 `fingerprint_mismatch` when this node's model is
not the one that began it), never forwarded: the resumer chose this node for its fingerprint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import cast

from fastapi import Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse

from llamanet.node.disconnect import unless_disconnected
from llamanet.node.engine import GenerationResult, Job, QueueFull, SamplingParams
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError, capability_not_served, model_not_found
from llamanet.node.gateway import is_forwarded
from llamanet.node.node import LlamaNetNode
from llamanet.node.streaming import ChunkFormat, event_stream, usage_of
from llamanet.protocol import ChatMessage, FinishReason, ResumeFrom, SamplingFields, StreamControl

__all__ = [
    "SWARM_ALIAS",
    "LocalHandler",
    "admit",
    "check_resume",
    "finish_reason",
    "node_of",
    "run",
    "sampling_params",
    "serve",
    "stream",
    "stream_control",
    "usage",
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


def _cannot_serve(request: Request, model: str | None) -> APIError:
    node = node_of(request)
    if node.loading:
        return APIError(
            503, "The model is still loading.", code="model_loading", headers={"Retry-After": "2"}
        )
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
    return await gateway.forward(
        request,
        wanted,
        max_tokens=max_tokens or 0,
        reason="model not served here",
        capability=capability,
    )


def sampling_params(req: SamplingFields, max_tokens: int | None) -> SamplingParams:
    """The engine's sampling parameters from a request's sampling fields."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repeat_penalty=req.repeat_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=tuple(req.stop_list()),
    )


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
        )


def stream_control(req: SamplingFields, streaming: bool) -> StreamControl:
    """The request's internal `llamanet` field; a resumption is for streams only."""
    control = req.llamanet or StreamControl()
    if control.resume is not None and not streaming:
        raise APIError(
            400, "llamanet.resume continues a stream: it needs stream=true.", param="llamanet"
        )
    return control


async def admit(
    engine: Engine,
    params: SamplingParams,
    *,
    prompt: str | None = None,
    messages: list[ChatMessage] | None = None,
    resume: ResumeFrom | None = None,
) -> Job:
    """Tokenizes the prompt (or renders the chat) and submits it; raises before any response."""
    if messages is not None:
        tokens = await engine.tokenize(
            messages=[{"role": m.role, "content": m.text()} for m in messages]
        )
    else:
        tokens = await engine.tokenize(prompt=prompt or "")
    if resume is not None:
        return engine.submit(tokens, params, resume_tokens=resume.token_ids)
    return engine.submit(tokens, params)


def _record(request: Request) -> Callable[[GenerationResult], None]:
    def on_result(result: GenerationResult) -> None:
        request.state.tokens = result.completion_tokens
        node_of(request).metrics.ttft.observe(result.ttft_ms / 1000)

    return on_result


def stream(
    request: Request,
    engine: Engine,
    job: Job,
    fmt: ChunkFormat,
    include_usage: bool,
    control: StreamControl | None = None,
) -> EventSourceResponse:
    """The job's Server-Sent Events response in the given chunk format."""
    settings = node_of(request).settings
    body = event_stream(
        engine,
        job,
        fmt,
        include_usage=include_usage,
        on_result=_record(request),
        timeout=settings.request_timeout,
        token_ids=control is not None and (control.token_ids or control.resume is not None),
        resumed=control is not None and control.resume is not None,
        keepalive=settings.keepalive_interval,
    )
    return EventSourceResponse(
        body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def run(request: Request, engine: Engine, job: Job) -> GenerationResult:
    """Runs the job to its end while the client stays (499) and within the timeout (504)."""
    timeout = node_of(request).settings.request_timeout
    result = await unless_disconnected(request, engine.run(job), timeout)
    _record(request)(result)
    return result


def finish_reason(result: GenerationResult) -> FinishReason:
    """The engine types it `str`; the response models validate it (a ValidationError, not a
    silent wrong value, should an engine ever report another)."""
    return cast(FinishReason, result.finish_reason)


usage = usage_of  # one definition of usage (streaming.usage_of)
