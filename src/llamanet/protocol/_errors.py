"""The error body every endpoint answers with, and the `code` of each kind of validation error.

`ErrorResponse` is OpenAI's error shape, so the SDK raises its own exceptions from it;
`validation_code` is how the node's error handler names a validation error the JSON schema
cannot express. Kept apart from the models whose validators raise those errors: a handler needs
this, not them.
"""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["VALIDATION_CODES", "ErrorDetail", "ErrorResponse", "validation_code"]


# Validation errors of constraints that a JSON schema cannot state (between fields, between
# messages, on the content of a schema) get their own error `code` instead of `invalid_value`,
# so a client (and the fuzzing run, tests/test_fuzz_schemathesis.py) can tell them apart from a
# body that breaks the published schema. Keys are the PydanticCustomError types raised by the
# validators of this package's other modules.
VALIDATION_CODES = {
    "unknown_tool_call": "unknown_tool_call",
    "tool_choice": "invalid_tool_choice",
    "duplicate_tool": "duplicate_tool_name",
    "invalid_schema": "invalid_schema",
    "logprobs": "logprobs_required",
    "tools": "tools_need_messages",
    "unsupported": "unsupported_value",
    "missing_schema": "missing_schema",
    "input": "invalid_input",
    "input_item": "invalid_input_item",
}


def validation_code(error_type: str | None) -> str:
    """The error `code` of a validation error of this type (see `VALIDATION_CODES`)."""
    return VALIDATION_CODES.get(error_type or "", "invalid_value")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
