"""What every wire format is built of: base classes, shared validators and types, ids, the header.

The request base classes (`_Lenient`: unknown fields ignored; `_RequestBody`: valid Unicode
throughout), the number, name, content-part and unsupported-field validators that chat, the
Responses API and the tools share, `Usage`, `NODE_HEADER` and `new_id`. It imports no other
module of the package, so every other one can import it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "NODE_HEADER",
    "FinishReason",
    "FunctionName",
    "Number",
    "StreamOptions",
    "Unsupported",
    "Usage",
    "new_id",
]


NODE_HEADER = "X-LlamaNet-Node"  # every response names the node that served it


FinishReason = Literal["stop", "length"]


class _Lenient(BaseModel):
    """Requests ignore unknown fields (as vLLM and llama.cpp do) so newer SDKs keep working."""

    model_config = ConfigDict(extra="ignore")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _invalid_text(value: Any, path: str = "") -> str | None:
    """Where `value` holds a string that is not valid Unicode, else None.

    JSON can escape lone UTF-16 surrogates (`"\\ud800"`) that no UTF-8 text can hold; they would
    reach the tokenizer (and error messages) and fail there.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "the request body"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = _invalid_text(key, path) or _invalid_text(item, f"{path}.{key}".lstrip("."))
            if where:
                return where
    elif isinstance(value, list):
        for index, item in enumerate(value):
            where = _invalid_text(item, f"{path}.{index}".lstrip("."))
            if where:
                return where
    return None


class _RequestBody(_Lenient):
    """A top-level request body: every string in it must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _invalid_text(data)
        if where:
            raise ValueError(f"'{where}' is not valid Unicode text (it holds a lone surrogate)")
        return data


def _json_number(value: Any) -> Any:
    """Numbers must be JSON numbers, as the schema says (and OpenAI requires): pydantic's lax
    mode would also take `"5"` or `true`."""
    if isinstance(value, str | bool):
        raise PydanticCustomError(
            "number_type",
            "Input should be a number, not {kind}",
            {"kind": "a string" if isinstance(value, str) else "a boolean"},
        )
    return value


Number = BeforeValidator(_json_number)


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # function and schema names, as OpenAI requires

FunctionName = Annotated[str, Field(pattern=_NAME_PATTERN)]
_NON_TEXT_PARTS = frozenset(
    {"image_url", "input_audio", "audio", "image", "file", "input_image", "input_file"}
)


def _text_only() -> PydanticCustomError:
    return PydanticCustomError(
        "text_only",
        "this model accepts text only: image, audio and file content parts are not supported",
    )


def _check_json_schema(schema: Any, *, what: str) -> None:
    """Raises a clear error unless `schema` is a JSON schema (draft 2020-12 meta-schema)."""
    import jsonschema  # a validation library, imported when a schema is actually sent

    if not isinstance(schema, dict):
        raise PydanticCustomError(
            "invalid_schema", "{what} must be a JSON schema object", {"what": what}
        )
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise PydanticCustomError(
            "invalid_schema",
            "{what} is not a valid JSON schema{at}: {reason}",
            {"what": what, "at": f" (at '{where}')" if where else "", "reason": exc.message},
        ) from None


_UNSUPPORTED = {  # known request fields this node cannot honour, and why
    "functions": "the deprecated 'functions' is not supported: send 'tools'",
    "function_call": "the deprecated 'function_call' is not supported: send 'tool_choice'",
    "audio": "audio output is not supported: this model produces text only",
    "background": "background responses are not supported",
    "conversation": "conversations are not supported: send previous_response_id or the input",
    "prompt": "stored prompt templates are not supported",
    "web_search_options": "web search is not supported: this node has no tools of its own",
    "moderation": "moderation policies are not supported",
    "suffix": "suffix (text insertion) is not supported",
}


def _reject_unsupported(value: Any, info: ValidationInfo) -> None:
    if value is not None:
        message = _UNSUPPORTED.get(info.field_name or "", "this field is not supported")
        raise PydanticCustomError("unsupported", message)


# A known field this node cannot honour: absent or null, else a clear 400 (see _UNSUPPORTED).
Unsupported = Annotated[
    None, BeforeValidator(_reject_unsupported), WithJsonSchema({"type": "null"})
]


def _json_kind(value: Any) -> str:
    """Picks the member of a `str | list[...] | None` union up front, so a bad value gets the
    error of the member it was meant for instead of one error per member."""
    if value is None:
        return "none"
    return "list" if isinstance(value, list) else "str"


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: `chatcmpl-…`, `cmpl-…`, `resp-…`."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _now() -> int:
    return int(time.time())
