"""Grammars against the real default model's vocabulary (vocab only, no weights): random walks
through llama.cpp's grammar sampler show that what structured output and forced tool calls let
through always parses and validates; and the default model's own chat template, read from the
GGUF, has no tool support (so tools use the generic envelope)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grammar_walk import VocabWalker

from llamanet.node.structured import JSON_OBJECT_GRAMMAR, schema_grammar, validate_output
from llamanet.node.tool_parser import parse_tool_output
from llamanet.node.tools import ToolFormat, plan_tools, template_caps, tool_specs
from llamanet.protocol import ChatCompletionRequest

pytestmark = pytest.mark.model

WALKS = 12


@pytest.fixture(scope="module")
def walker(model_path: Path) -> VocabWalker:
    return VocabWalker(model_path)


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
            "kind": {"enum": ["a", "b"]},
            "score": {"type": "number", "minimum": 0},
            "note": {"type": ["string", "null"], "maxLength": 3},
        },
        "required": ["name", "age", "kind"],
        "additionalProperties": False,
    },
    {
        "type": "array",
        "items": {"type": "integer", "exclusiveMinimum": -3, "maximum": 250},
        "minItems": 1,
        "maxItems": 3,
    },
    {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{1,3}$"},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_schema_grammars_only_let_valid_json_through(walker: VocabWalker, schema: dict) -> None:
    grammar = schema_grammar(schema)
    for seed in range(WALKS):
        validate_output(walker.walk(grammar, seed=seed), schema)


def test_json_object_grammar(walker: VocabWalker) -> None:
    for seed in range(WALKS):
        json.loads(walker.walk(JSON_OBJECT_GRAMMAR, seed=seed, max_tokens=600))


def test_the_default_models_template(model_path: Path, walker: VocabWalker) -> None:
    template = walker.llm.metadata["tokenizer.chat_template"]
    caps = template_caps(template)
    assert caps.format is ToolFormat.GENERIC and not caps.tools


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("choice", ["required", "add", "auto"])
@pytest.mark.parametrize("parallel", [True, False])
def test_generic_tool_grammars_give_valid_calls(
    walker: VocabWalker, choice: str, parallel: bool
) -> None:
    tool_choice = {"type": "function", "function": {"name": choice}} if choice == "add" else choice
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [WEATHER, ADD],
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel,
        }
    )
    specs = tool_specs(req.tools)
    template = walker.llm.metadata["tokenizer.chat_template"]
    plan = plan_tools(
        req.messages, specs, req.tool_choice_mode(), parallel=parallel, template=template
    )
    assert plan.grammar is not None
    schemas = {spec.name: spec.parameters for spec in specs}
    answered = 0
    for seed in range(WALKS // 2):
        text = walker.walk(plan.grammar, seed=seed, max_tokens=600)
        content, calls = parse_tool_output(text, plan.format, plan.names)
        if choice == "auto" and not calls:
            assert content == json.loads(text)["response"]
            answered += 1
            continue
        assert content is None and calls, text
        assert parallel or len(calls) == 1
        for call in calls:
            assert choice in ("auto", "required") or call.function.name == choice
            validate_output(call.function.arguments, schemas[call.function.name])
    assert choice == "auto" or answered == 0
