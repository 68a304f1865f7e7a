"""The error responses the routes document in the OpenAPI schema (schemathesis fuzzes by it).

Every error has the OpenAI shape (`errors.py`), and invalid input is a 400, never FastAPI's 422:
"4XX" documents the rarer client errors (405, ...) and keeps FastAPI from adding a 422.
"""

from __future__ import annotations

from typing import Any

from llamanet.protocol import ErrorResponse

__all__ = ["COMMON", "ERRORS", "JSON_OR_SSE", "METRICS", "SSE", "error_doc"]

Responses = dict[int | str, dict[str, Any]]


def error_doc(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """One documented error response: the OpenAI error body, optionally with `Retry-After`."""
    doc: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        doc["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer"},
            }
        }
    return doc


COMMON: Responses = {  # every route
    401: error_doc("Missing or invalid API key (a node started with `--api-key`)."),
    "4XX": error_doc("Any other client error."),
}
ERRORS: Responses = {  # the generation routes
    **COMMON,
    400: error_doc(
        "Invalid request: malformed JSON, a wrong type or value, or a prompt plus "
        "max_tokens beyond the model's context length."
    ),
    403: error_doc("A forwarded request without a valid private-swarm proof."),
    404: error_doc("No node in the swarm serves the model."),
    413: error_doc("The body is larger than the node's limit."),
    415: error_doc("The body is not JSON."),
    429: error_doc("A per-client rate or concurrency limit was reached.", retry_after=True),
    500: error_doc("The generation failed."),
    502: error_doc("The peer node the request was forwarded to failed."),
    503: error_doc(
        "The queue is full, the model is loading, or no node has room.", retry_after=True
    ),
    504: error_doc("The request ran longer than the node's request timeout."),
}
_SSE_EVENTS: dict[str, Any] = {
    "description": "Server-Sent Events: one JSON chunk per event (`chat.completion.chunk`, "
    "`text_completion` or the native `StreamingChunk`), the last one with a "
    "`finish_reason`, then `data: [DONE]`; a failure after the start is one "
    '`{"error": {...}}` event and the end of the stream.',
    "itemSchema": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "string"},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    },
}
# Streaming routes return an `EventSourceResponse` themselves (admission must be able to fail with
# a real status first), so their 200 is documented here rather than through response_class.
SSE: Responses = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": _SSE_EVENTS}},
    **ERRORS,
}
JSON_OR_SSE: Responses = {  # `stream: true` answers with events
    200: {
        "description": "The completion, or Server-Sent Events with `stream: true`",
        "content": {"text/event-stream": _SSE_EVENTS},
    },
    **ERRORS,
}
METRICS: Responses = {
    200: {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **COMMON,
}
