"""Structured output: chat's `response_format` (free text, JSON mode, a JSON schema).

Its own module because it is its own feature (grammar-constrained output, `node/structured.py`);
the Responses API's equivalent, `text.format`, has its fields inline and lives in `_responses`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import FunctionName, _check_json_schema, _Lenient

__all__ = ["JSONSchemaFormat", "ResponseFormat"]


class JSONSchemaFormat(_Lenient):
    """`response_format.json_schema` (chat): the schema the answer must satisfy."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)

    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None

    @field_validator("schema_", mode="before")
    @classmethod
    def _valid_schema(cls, value: Any) -> Any:
        _check_json_schema(value, what="response_format's schema")
        return value


class ResponseFormat(_Lenient):
    """`response_format`: free text, any JSON object, or JSON that satisfies a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError(
                "missing_schema", "response_format of type 'json_schema' needs 'json_schema'"
            )
        return self
