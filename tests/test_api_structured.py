"""Structured output without the model: schema -> GBNF conversion, llama.cpp compiles every
grammar (it needs no vocabulary to parse one), unsupported schemas are clear 400s, and the
integer ranges the converter adds match exactly the integers they should."""

from __future__ import annotations

import re

import pytest

from llamanet.node.structured import (
    JSON_OBJECT_GRAMMAR,
    GrammarBuilder,
    InvalidOutput,
    SchemaNotSupported,
    check_grammar,
    int_range,
    schema_grammar,
    validate_output,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}

SUPPORTED = [
    PERSON,
    {},
    {"type": "object"},
    {"type": "string"},
    {"type": "boolean"},
    {"type": "null"},
    {"const": 3},
    {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
    {"type": ["string", "null"], "maxLength": 5},
    {"type": "number", "minimum": 0},
    {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"type": "string", "format": "email"},  # an annotation, as in JSON Schema
    {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    {  # recursive, root is a $ref (the library's resolver skips such $defs)
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                },
                "required": ["v", "next"],
            }
        },
        "$ref": "#/$defs/node",
    },
    {  # a def named like a JSON primitive must not become that primitive
        "type": "object",
        "properties": {"s": {"$ref": "#/$defs/string"}},
        "required": ["s"],
        "$defs": {"string": {"type": "integer"}},
    },
    {  # what pydantic emits for a nested model
        "$defs": {
            "Step": {
                "properties": {"explanation": {"title": "Explanation", "type": "string"}},
                "required": ["explanation"],
                "title": "Step",
                "type": "object",
            }
        },
        "properties": {
            "steps": {"items": {"$ref": "#/$defs/Step"}, "title": "Steps", "type": "array"},
            "final_answer": {"title": "Final Answer", "type": "string"},
        },
        "required": ["steps", "final_answer"],
        "title": "MathReasoning",
        "type": "object",
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SUPPORTED, ids=range(len(SUPPORTED)))
def test_supported_schemas_compile_in_llama_cpp(schema: dict) -> None:
    grammar = schema_grammar(schema)
    assert "root ::=" in grammar
    check_grammar(grammar)  # compiled again: no exception


UNSUPPORTED = [
    ({"not": {"type": "string"}}, "'not'"),
    ({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}, "multipleOf"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ({"type": "number", "maximum": 3}, "'number'"),
    ({"type": "string", "pattern": "abc"}, "anchored"),
    ({"type": "object", "required": ["a"]}, "'a'"),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 5000}, "above"),
    ({"type": "string", "maxLength": 100000}, "above"),
    ({"$ref": "https://example.com/schema.json"}, "remote"),
    ({"$ref": "#/$defs/missing"}, "points nowhere"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "empty"),
    ({"type": "integer", "minimum": 5, "maximum": 2}, "empty"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
]


@pytest.mark.parametrize(("schema", "needle"), UNSUPPORTED, ids=range(len(UNSUPPORTED)))
def test_unsupported_schemas_are_clear_400s(schema: dict, needle: str) -> None:
    with pytest.raises(SchemaNotSupported) as caught:
        schema_grammar(schema, param="response_format.json_schema.schema")
    error = caught.value
    assert error.status == 400
    assert error.detail.param == "response_format.json_schema.schema"
    assert error.detail.code == "unsupported_schema"
    assert needle in error.detail.message
    assert error.body()["error"]["type"] == "invalid_request_error"


def _as_regex(expression: str) -> re.Pattern[str]:
    """The digit-only GBNF of `int_range` read as a regex (quotes and spaces dropped)."""
    return re.compile(expression.replace('"', "").replace(" ", ""))


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (0, None),
        (5, None),
        (10, None),
        (0, 9),
        (10, 99),
        (3, 250),
        (-5, 5),
        (-120, -3),
        (None, -1),
        (None, 10),
        (None, None),
        (7, 7),
        (0, 0),
        (99, 101),
        (1, 1000),
        (-1000, 1000),
        (123, 4567),
    ],
)
def test_int_range_matches_exactly_its_integers(lo: int | None, hi: int | None) -> None:
    regex = _as_regex(int_range(lo, hi))
    for n in range(-2100, 6000):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(regex.fullmatch(str(n))) == inside, (lo, hi, n)
    assert not regex.fullmatch("007") and not regex.fullmatch("-0")


def test_json_object_grammar_compiles() -> None:
    check_grammar(JSON_OBJECT_GRAMMAR)
    assert JSON_OBJECT_GRAMMAR.startswith("array ::=") or "root ::= object" in JSON_OBJECT_GRAMMAR


def test_strings_exclude_raw_control_characters() -> None:
    # a raw newline inside a JSON string is invalid JSON: the grammar must not allow it
    assert r"\x00-\x1F" in schema_grammar({"type": "string"})


def test_check_grammar_refuses_a_broken_grammar() -> None:
    with pytest.raises(SchemaNotSupported):
        check_grammar("root ::= undefined-rule")
    with pytest.raises(SchemaNotSupported):
        check_grammar('root ::= root "a"')  # left recursion


def test_builder_combines_schemas_without_clashes() -> None:
    builder = GrammarBuilder()
    a = builder.add_schema(
        {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/t"}},
            "$defs": {"t": {"type": "integer"}},
        },
        "a-args",
    )
    b = builder.add_schema(
        {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/t"}},
            "$defs": {"t": {"type": "string"}},
        },
        "b-args",
    )
    grammar = builder.grammar(f"{a} | {b}")
    check_grammar(grammar)
    assert "ref-t ::=" in grammar and "ref-t1 ::=" in grammar


def test_validate_output() -> None:
    assert validate_output('{"name": "x", "age": 3}', PERSON) == {"name": "x", "age": 3}
    assert validate_output('{"a": 1}') == {"a": 1}
    with pytest.raises(InvalidOutput, match="not JSON"):
        validate_output('{"name": ', PERSON)
    with pytest.raises(InvalidOutput, match="schema"):
        validate_output('{"name": "x", "age": -1}', PERSON)
    with pytest.raises(InvalidOutput, match="object"):
        validate_output("[1]")
