"""Embeddings (`POST /v1/embeddings`): the request, its input rules and their schema, the answer.

No sampling, no tools: an embedding request shares only the request base class with the rest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import Number, _RequestBody

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "MAX_TOKEN_ID",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "EmbeddingUsage",
]


MAX_EMBEDDING_INPUTS = 2048  # the OpenAI limit
MAX_TOKEN_ID = (1 << 31) - 1  # llama.cpp tokens are int32; the model's vocabulary decides further

_TOKEN_ARRAY: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID},
    "minItems": 1,
}
_EMBEDDING_INPUT_SCHEMA: dict[str, Any] = {  # what `_embedding_input` enforces
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": MAX_EMBEDDING_INPUTS,
        },
        _TOKEN_ARRAY,
        {"type": "array", "items": _TOKEN_ARRAY, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
    ],
    "title": "Input",
    "description": "A string, a list of strings, a token array, or a list of token arrays; "
    f"never empty, at most {MAX_EMBEDDING_INPUTS} inputs, each within the model's context.",
}


def _embedding_input(value: Any) -> Any:
    """A string, a list of strings, a token array or a list of token arrays; never empty."""

    def bad(message: str) -> PydanticCustomError:
        return PydanticCustomError("embedding_input", message)

    def token(t: Any) -> bool:  # an integer, also as JSON may write it (`7.0`), as for every int
        whole = isinstance(t, int) or (isinstance(t, float) and t.is_integer())
        return whole and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID

    def tokens(array: list[Any]) -> bool:
        return all(token(t) for t in array)

    if isinstance(value, str):
        if not value:
            raise bad("input must not be an empty string")
        return value
    if not isinstance(value, list) or not value:
        raise bad("input must be a string, a list of strings, or token arrays, and not empty")
    if tokens(value):
        return [int(t) for t in value]  # one token array: its length is the context's to bound
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise bad(f"input holds at most {MAX_EMBEDDING_INPUTS} items")
    if all(isinstance(item, str) for item in value):
        if not all(value):
            raise bad("input must not hold an empty string")
        return value
    if all(isinstance(item, list) and item and tokens(item) for item in value):
        return [[int(t) for t in item] for item in value]
    raise bad(
        "input must be a string, a list of strings, a token array (integers from 0 to "
        f"{MAX_TOKEN_ID}) or a list of non-empty token arrays"
    )


class EmbeddingRequest(_RequestBody):
    model: str | None = None
    input: Annotated[
        str | list[str] | list[int] | list[list[int]],
        BeforeValidator(_embedding_input),
        WithJsonSchema(_EMBEDDING_INPUT_SCHEMA),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), Number] | None = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: strings, or token arrays."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and all(isinstance(t, int) for t in self.input):
            return [self.input]  # type: ignore[return-value]  # one token array
        return self.input  # type: ignore[return-value]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
