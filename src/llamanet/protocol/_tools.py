"""Function tools: their definitions, the calls a model makes, `tool_choice`, and their checks.

Chat requests, the native API and the Responses API all take function tools; their shapes and
the checks between `tools` and `tool_choice` are one concept, shared here. Streamed tool-call
deltas belong to the chat chunk (`_chat`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, StrictBool, field_validator
from pydantic_core import PydanticCustomError

from llamanet.protocol._common import FunctionName, _check_json_schema, _Lenient

__all__ = [
    "MAX_TOOLS",
    "ChatTool",
    "ChatToolChoice",
    "FunctionDefinition",
    "NamedFunction",
    "NamedToolChoice",
    "ToolCall",
    "ToolCallFunction",
    "ToolChoiceMode",
    "check_tool_choice",
    "check_tool_names",
]


MAX_TOOLS = 128  # the OpenAI limit


class FunctionDefinition(_Lenient):
    """A function the model may call; `parameters` is the JSON schema of its arguments."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters_schema(cls, value: Any) -> Any:
        if value is None:
            return None
        _check_json_schema(value, what="the function's parameters")
        kind = value.get("type", "object")
        if kind != "object":
            raise PydanticCustomError(
                "invalid_schema",
                "a function's parameters must be a JSON schema of type 'object', not '{kind}'",
                {"kind": kind},
            )
        return value


def _function_tool_only(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "function":
        raise PydanticCustomError(
            "tool_type",
            "only function tools are supported, not '{kind}'",
            {"kind": value.get("type")},
        )
    return value


class ChatTool(_Lenient):
    """A chat `tools` entry: `{"type": "function", "function": {...}}` (function tools only)."""

    type: Literal["function"]
    function: FunctionDefinition


class ToolCallFunction(_Lenient):
    name: str
    arguments: str  # a JSON text, as OpenAI sends it


class ToolCall(_Lenient):
    """A tool call of an assistant message: in a response, and in the history sent back."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


ToolChoiceMode = Literal["none", "auto", "required"]


def _tool_choice_shape(value: Any) -> Any:
    """One clear message for a wrong `tool_choice` instead of one per union member."""
    if value is None or value in ("none", "auto", "required") or isinstance(value, dict):
        return value
    raise PydanticCustomError(
        "tool_choice",
        "tool_choice must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
    )


ChatToolChoice = Annotated[ToolChoiceMode | NamedToolChoice, BeforeValidator(_tool_choice_shape)]


def check_tool_choice(choice: str | None, names: list[str] | None) -> None:
    """`tool_choice` against the declared tools: a named function must be one of them."""
    if choice is None or choice in ("none", "auto"):
        return
    if not names:
        raise PydanticCustomError(
            "tool_choice", "tool_choice '{choice}' needs 'tools'", {"choice": choice}
        )
    if choice != "required" and choice not in names:
        raise PydanticCustomError(
            "tool_choice",
            "tool_choice names the function '{name}', which is not among the tools ({names})",
            {"name": choice, "names": ", ".join(names)},
        )


def check_tool_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PydanticCustomError(
                "duplicate_tool", "two tools are named '{name}'", {"name": name}
            )
        seen.add(name)
