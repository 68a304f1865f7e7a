"""Decoding an OpenAI embeddings answer: base64 little-endian float32 (what the client asks
for: a quarter of the bytes of JSON floats) or plain floats."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llamanet.client._errors import MalformedAnswer
from llamanet.protocol import EmbeddingList

__all__ = ["EmbeddingInput", "decode_embeddings"]

EmbeddingInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


def decode_embeddings(content: bytes) -> list[list[float]]:
    """The vectors of an embeddings response, in input order."""
    try:
        data = EmbeddingList.model_validate_json(content).data
    except ValidationError as exc:
        raise MalformedAnswer(f"not an embeddings response: {exc}") from exc
    vectors: list[list[float]] = []
    for item in sorted(data, key=lambda e: e.index):
        if isinstance(item.embedding, list):
            vectors.append(item.embedding)
            continue
        floats = array.array("f")
        try:
            floats.frombytes(base64.b64decode(item.embedding, validate=True))
        except ValueError as exc:  # binascii.Error, or a length not a multiple of 4
            raise MalformedAnswer(f"embedding {item.index} is not base64 float32") from exc
        if sys.byteorder == "big":
            floats.byteswap()
        vectors.append(floats.tolist())
    return vectors
