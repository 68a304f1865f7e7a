"""The exceptions `LlamaNetClient` raises (the tree is drawn in `llamanet.client`), and how a
node's error answer becomes one."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from llamanet.protocol import NODE_HEADER, ErrorDetail
from llamanet.swarm.failover import Verdict, judge_status, judge_stream_error

__all__ = [
    "LlamaNetError",
    "NoNodeAvailable",
    "NodeError",
    "NodeUnreachable",
    "StreamInterrupted",
]


class LlamaNetError(Exception):
    """Base of every error the client raises."""


class NodeError(LlamaNetError):
    """A node answered with an error: an HTTP 4xx/5xx, or an error event inside a stream.

    `status` is None for an error event inside a stream.
    """

    def __init__(
        self,
        status: int | None,
        error: ErrorDetail,
        *,
        node_id: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        where = f" from node {node_id[:12]}" if node_id else ""
        code = f"HTTP {status}" if status is not None else "stream error"
        super().__init__(f"{code}{where}: {error.message} ({error.type}, {error.code})")
        self.status = status
        self.error = error
        self.node_id = node_id
        self.url = url
        self.retry_after = retry_after

    @property
    def verdict(self) -> Verdict:
        """What the failover policy makes of this error (`llamanet.swarm.failover`)."""
        if self.status is None:
            return judge_stream_error(self.error.type, self.error.code)
        return judge_status(
            self.status,
            error_type=self.error.type,
            error_code=self.error.code,
            retry_after=self.retry_after,
        )

    @property
    def retryable(self) -> bool:
        """Whether another node might succeed where this one failed."""
        return self.verdict.retry_elsewhere


class NodeUnreachable(LlamaNetError):
    """A node could not be reached, did not answer in time, or sent something that was not a
    valid answer."""

    def __init__(self, node_id: str, url: str, cause: BaseException) -> None:
        super().__init__(f"node {node_id[:12]} at {url} failed: {type(cause).__name__}: {cause}")
        self.node_id = node_id
        self.url = url
        self.cause = cause


class NoNodeAvailable(LlamaNetError):
    """No node could take the request; `attempts` lists each node tried and how it failed."""

    def __init__(self, message: str, attempts: Sequence[NodeError | NodeUnreachable] = ()) -> None:
        if attempts:
            message += "; attempts: " + "; ".join(str(a) for a in attempts)
        super().__init__(message)
        self.attempts = list(attempts)


class StreamInterrupted(LlamaNetError):
    """A stream broke after `tokens_received` chunks had been delivered: the answer is partial."""

    def __init__(
        self,
        node_id: str,
        url: str,
        tokens_received: int,
        *,
        error: NodeError | None = None,
        reason: str = "",
        nodes_tried: list[str] | None = None,
    ) -> None:
        detail = reason or (str(error) if error else "the stream ended early")
        tried = nodes_tried or [node_id]
        resumed = (
            f" (resumed on {', '.join(n[:12] for n in tried[1:])}; no other node with the same "
            "model could take over)"
            if len(tried) > 1
            else "; no other node with the same model could take over"
        )
        super().__init__(
            f"stream from node {node_id[:12]} at {url} broke after {tokens_received} "
            f"chunks: {detail}{resumed}"
        )
        self.node_id = node_id
        self.url = url
        self.tokens_received = tokens_received
        self.error = error
        self.nodes_tried = tried  # every node that served or was asked to resume the stream


class MalformedAnswer(Exception):
    """A node's answer did not parse: treated like an unreachable node (never raised to users)."""


# --------------------------------------------------------------------------- reading errors


def retry_after_of(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_detail(payload: Any, status: int | None, fallback: str) -> ErrorDetail:
    """The OpenAI-shaped error in `payload`, or one made up from `fallback`."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        with contextlib.suppress(ValidationError):
            return ErrorDetail.model_validate(payload["error"])
    kind = "server_error" if status is None or status >= 500 else "invalid_request_error"
    return ErrorDetail(message=fallback[:500] or "no error message", type=kind)


def response_error(response: httpx.Response, node_id: str, url: str) -> NodeError:
    """The `NodeError` of an HTTP error answer (its body already read)."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = error_detail(payload, response.status_code, response.text)
    return NodeError(
        response.status_code,
        detail,
        node_id=response.headers.get(NODE_HEADER, node_id),
        url=url,
        retry_after=retry_after_of(response),
    )
