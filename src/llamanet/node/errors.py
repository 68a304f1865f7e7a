"""Errors in the OpenAI shape, and the FastAPI handlers that make every failure one."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamanet.node.engine import ContextLengthExceeded, EngineClosed, EngineError, QueueFull
from llamanet.protocol import ErrorDetail, ErrorResponse, validation_code

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    502: "upstream_error",
    503: "server_overloaded",
    504: "timeout_error",
}


class APIError(Exception):
    """Raise anywhere in a route to answer with this status and an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(
            message=message,
            type=type
            or _TYPE_BY_STATUS.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            param=param,
            code=code,
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=self.detail).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def model_not_found(model: str, available: list[str]) -> APIError:
    listed = ", ".join(sorted(available)) or "none"
    return APIError(
        404,
        f"The model '{model}' does not exist or is not served in this swarm. "
        f"Available models: {listed}.",
        param="model",
        code="model_not_found",
    )


def unknown_endpoint() -> APIError:
    """A path no route serves (whatever the method): 404, like OpenAI's API."""
    return APIError(
        404,
        "No such endpoint. The API lives under /v1 (OpenAI) and /generate, /status.",
        code="not_found",
    )


def from_engine_error(exc: EngineError) -> APIError:
    """The HTTP face of an engine error raised before a response started."""
    if isinstance(exc, QueueFull):
        return APIError(
            503, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, ContextLengthExceeded):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, EngineClosed):
        return APIError(503, str(exc), code="shutting_down", headers={"Retry-After": "1"})
    return APIError(500, str(exc), type="server_error", code="generation_failed")


def stream_error_body(exc: Exception) -> dict[str, Any]:
    """The `data: {"error": ...}` event that ends a stream which failed after it started."""
    if isinstance(exc, EngineError):
        return from_engine_error(exc).body()
    if isinstance(exc, TimeoutError):
        return APIError(
            504, "The request ran longer than the node's request timeout.", code="timeout"
        ).body()
    return APIError(
        500, f"internal error: {exc}", type="server_error", code="internal_error"
    ).body()


_FASTAPI_BODY_ERROR = "There was an error parsing the body"  # a body json.loads() cannot read
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_tag(part: object) -> bool:
    """A union member's tag in a pydantic error location (`str`, `list[str]`, `constrained-str`),
    which names no field the user sent."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part or "-" in part)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None, None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_tag(part)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return (
            "We could not parse the JSON body of your request: it is not valid JSON.",
            None,
            "invalid_json",
        )
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing" and param is None:
        return "The request has no body: send a JSON object.", None, "invalid_json"
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    where = f"'{param}'" if param else "the request body"
    extra = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"Invalid value for {where}: {msg}.{extra}", param, validation_code(first.get("type"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return from_engine_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc)
        return APIError(400, message, param=param, code=code).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = None
        if exc.status_code == 413:
            message = "The request body is too large."
        elif exc.status_code == 404:
            return unknown_endpoint().response()
        elif exc.status_code == 400 and message == _FASTAPI_BODY_ERROR:  # e.g. invalid UTF-8
            message, code = (
                "We could not read the body of your request: it is not JSON text in UTF-8.",
                "invalid_json",
            )
        elif exc.status_code == 408:
            code = "timeout"
        return APIError(
            exc.status_code, message, code=code, headers=dict(exc.headers or {})
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(
            500, "The node had an internal error.", type="server_error", code="internal_error"
        ).response()


def capability_not_served(capability: str, model: str | None) -> APIError:
    """No node (this one, or any known peer) serves `capability` ("embeddings") for `model`."""
    where = f"the model '{model}'" if model else "any model"
    return APIError(
        404,
        f"No node in the swarm serves {capability} for {where}.",
        param="model",
        code="model_not_found",
    )
