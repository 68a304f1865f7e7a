"""The sampling fields and limits every generation request shares (`SamplingFields`).

Chat, legacy completions and the native API accept the same sampling options (OpenAI's names
plus llama.cpp's) with the same bounds; the stop-sequence and logit-bias rules are here with the
JSON schemas that publish them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import Number, _RequestBody
from llamanet.protocol._resume import StreamControl

__all__ = [
    "MAX_LOGIT_BIAS",
    "MAX_N",
    "MAX_STOP_LENGTH",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_LIMIT",
    "LogitBias",
    "MaxTokens",
    "Penalty",
    "SamplingFields",
    "Temperature",
    "TopP",
]


MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_TOKENS_LIMIT = 1 << 20  # far beyond any context; a request above it is malformed, not long


Temperature = Annotated[float, Field(ge=0.0, le=2.0), Number]
TopP = Annotated[float, Field(gt=0.0, le=1.0), Number]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0), Number]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), Number]


_STOP_ITEM = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LENGTH}
_STOP_SCHEMA: dict[str, Any] = {  # what `_check_stop` enforces, for the OpenAPI schema
    "anyOf": [
        _STOP_ITEM,
        {"type": "array", "items": _STOP_ITEM, "maxItems": MAX_STOP_SEQUENCES},
        {"type": "null"},
    ],
    "title": "Stop",
    "description": f"Up to {MAX_STOP_SEQUENCES} non-empty stop sequences of at most "
    f"{MAX_STOP_LENGTH} characters each.",
}


class SamplingFields(_RequestBody):
    """Sampling options common to every generation request (OpenAI names plus llama.cpp's)."""

    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=0, le=1000), Number] = 40
    min_p: Annotated[float, Field(ge=0.0, le=1.0), Number] = 0.05
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0), Number] = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    seed: Annotated[int, Number] | None = None
    stop: Annotated[str | list[str] | None, WithJsonSchema(_STOP_SCHEMA)] = None
    llamanet: StreamControl | None = Field(
        default=None, description="Internal: stream resumption between LlamaNet nodes."
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        for stop in stops:
            if not stop:
                raise ValueError("stop sequences must not be empty")
            if len(stop) > MAX_STOP_LENGTH:
                raise ValueError(f"a stop sequence is limited to {MAX_STOP_LENGTH} characters")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # normalised to a list by the validator


MAX_N = 8  # choices per request: each is a sequence of its own in the engine's batch


MAX_LOGIT_BIAS = 300  # entries; OpenAI documents a bias per token id, -100..100


def _logit_bias(value: Any) -> Any:
    """Keys are token ids (JSON object keys, so strings); values -100..100."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PydanticCustomError("logit_bias", "logit_bias must map token ids to biases")
    if len(value) > MAX_LOGIT_BIAS:
        raise PydanticCustomError(
            "logit_bias", "logit_bias holds at most {n} entries", {"n": MAX_LOGIT_BIAS}
        )
    out: dict[str, float] = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise PydanticCustomError(
                "logit_bias", "logit_bias keys are token ids, not '{key}'", {"key": key}
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise PydanticCustomError(
                "logit_bias",
                "the bias of token {key} must be a number from -100 to 100",
                {"key": key},
            )
        out[key] = float(bias)
    return out


_LOGIT_BIAS_SCHEMA: dict[str, Any] = {  # what `_logit_bias` enforces, for the OpenAPI schema
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            "maxProperties": MAX_LOGIT_BIAS,
        },
        {"type": "null"},
    ],
    "title": "Logit Bias",
    "description": "Token id (a string of digits, within the model's vocabulary) -> bias.",
}
LogitBias = Annotated[
    dict[str, float] | None, BeforeValidator(_logit_bias), WithJsonSchema(_LOGIT_BIAS_SCHEMA)
]
