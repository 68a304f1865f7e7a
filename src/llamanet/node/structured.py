"""Structured output: JSON schemas become llama.cpp grammars (GBNF), so the answer is JSON that
satisfies the schema by construction, whatever the model.

The conversion is llama-cpp-python's `SchemaConverter` (a port of llama.cpp's
json-schema-to-grammar), extended where it would otherwise drop a constraint without a word:
integer bounds, `type` lists with constraints, and `{m,n}` repetitions for lengths (its nested
optionals grow one parser level per item). A schema keyword that no grammar here enforces is a
clear 400 (`SchemaNotSupported`), never a grammar that lets invalid JSON through: the answer of a
`json_schema` request always validates unless cut by `max_tokens`. `format` is an annotation, as
in JSON Schema itself: `date`, `time`, `date-time` and `uuid` are enforced, others are not.

Every grammar is compiled by llama.cpp itself (`llama_sampler_init_grammar` without a vocabulary
parses the grammar and checks it for left recursion) before a request is admitted, so a grammar
the sampler would refuse is a 400 too, not a failure mid-generation.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp.llama_grammar import (
    INVALID_RULE_CHARS_RE,
    PRIMITIVE_RULES,
    BuiltinRule,
    SchemaConverter,
)

from llamanet.node.errors import APIError

__all__ = [
    "JSON_OBJECT_GRAMMAR",
    "GrammarBuilder",
    "InvalidOutput",
    "SchemaNotSupported",
    "check_grammar",
    "int_range",
    "json_object_grammar",
    "schema_grammar",
    "validate_output",
]

MAX_REPETITION = 1000  # minItems/maxItems/minLength/maxLength beyond this: a 400
MAX_SCHEMA_DEPTH = 32
MAX_GRAMMAR_CHARS = 256 * 1024

# JSON strings hold no raw control characters; the converter's `char` allows them, and a newline
# inside a string would make the answer invalid JSON.
_JSON_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    [],
)

_UNSUPPORTED_KEYWORDS = {
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "contains",
    "minContains",
    "maxContains",
    "uniqueItems",
    "multipleOf",
    "minProperties",
    "maxProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
}
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties")


class SchemaNotSupported(APIError):
    """A valid JSON schema that no grammar here can enforce: a 400 naming the keyword."""

    def __init__(self, reason: str, *, param: str | None = None) -> None:
        super().__init__(
            400,
            f"This JSON schema cannot be enforced by the node's structured output: {reason}.",
            param=param,
            code="unsupported_schema",
        )


class InvalidOutput(ValueError):
    """Generated text that is not JSON, or not JSON that satisfies the schema."""


# --------------------------------------------------------------------------- integer ranges


def _digits(lo: str, hi: str) -> str:
    """GBNF for the decimal strings of one length from `lo` to `hi` (lo <= hi)."""
    if not lo:
        return ""
    if lo == hi:
        return f'"{lo}"'
    rest = len(lo) - 1
    if lo[0] == hi[0]:
        return f'"{lo[0]}" ({_digits(lo[1:], hi[1:])})'
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return f"[{lo[0]}-{hi[0]}]" + (f" [0-9]{{{rest}}}" if rest else "")
    alternatives = []
    start, end = int(lo[0]), int(hi[0])
    if lo[1:] == "0" * rest:
        alternatives.append(f"[{start}-{end - 1}] [0-9]{{{rest}}}")
    else:
        alternatives.append(f'"{start}" ({_digits(lo[1:], "9" * rest)})')
        if start + 1 <= end - 1:
            alternatives.append(f"[{start + 1}-{end - 1}] [0-9]{{{rest}}}")
    if hi[1:] == "9" * rest:
        alternatives.append(f'"{end}" [0-9]{{{rest}}}')
    else:
        alternatives.append(f'"{end}" ({_digits("0" * rest, hi[1:])})')
    return " | ".join(alternatives)


def _natural(lo: int, hi: int | None) -> list[str]:
    """Alternatives for the integers lo..hi (hi None: unbounded), lo >= 0, no leading zeros."""
    out = []
    length = len(str(lo))
    while hi is None or length <= len(str(hi)):
        first = max(lo, 10 ** (length - 1) if length > 1 else 0)
        last = 10**length - 1 if hi is None else min(hi, 10**length - 1)
        if hi is None and first == 10 ** (length - 1) and length > 1:
            out.append(f"[1-9] [0-9]{{{length - 1},}}")  # every longer number too
            return out
        if first <= last:
            out.append(_digits(str(first), str(last)))
        if hi is None and length >= len(str(lo)):
            out.append(f"[1-9] [0-9]{{{length},}}")
            return out
        length += 1
    return out


def int_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression (no trailing space) for the JSON integers in [lo, hi]; None: unbounded."""
    if lo is not None and hi is not None and lo > hi:
        raise SchemaNotSupported(f"the integer range [{lo}, {hi}] is empty")
    alternatives = []
    if lo is None or lo < 0:  # negatives -1 .. lo
        top = 1 if hi is None or hi >= 0 else -hi
        alternatives += [f'"-" ({alt})' for alt in _natural(top, None if lo is None else -lo)]
    if hi is None or hi >= 0:
        alternatives += [f"({alt})" for alt in _natural(max(lo or 0, 0), hi)]
    return " | ".join(alternatives)


def _bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    lo = hi = None
    if "minimum" in schema:
        lo = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"]
        lo = max(lo if lo is not None else -math.inf, math.floor(value) + 1)
    if "maximum" in schema:
        hi = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = schema["exclusiveMaximum"]
        hi = min(hi if hi is not None else math.inf, math.ceil(value) - 1)
    return lo, hi


# --------------------------------------------------------------------------- the converter


class _Converter(SchemaConverter):
    """llama-cpp-python's converter with the constraints it would drop made explicit."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    # The library's resolve_refs skips the `$defs` of a schema whose root is a `$ref`, and its
    # _resolve_ref names a rule after the ref's last segment (`#/$defs/string` would become the
    # primitive `string`); both are replaced.
    _ref_names: dict[str, str]

    def resolve_refs(self, schema: Any, url: str) -> Any:
        def target(ref: str) -> Any:
            node = schema
            for part in ref[1:].split("/")[1:] if ref != "#" else ():
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise SchemaNotSupported(f"the reference '{ref}' points nowhere")
            return node

        def walk(node: Any) -> None:
            if isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith("#"):
                    full = f"{url}{ref}"
                    node["$ref"] = full
                    self._refs.setdefault(full, target(ref))
                for key, value in node.items():
                    if key not in ("enum", "const", "default", "examples"):
                        walk(value)

        walk(schema)
        return schema

    def _resolve_ref(self, ref: str) -> str:
        if not hasattr(self, "_ref_names"):
            self._ref_names = {}
        name = self._ref_names.get(ref)
        if name is None:
            if ref not in self._refs:
                raise SchemaNotSupported(f"the reference '{ref}' points nowhere")
            base = "ref-" + (INVALID_RULE_CHARS_RE.sub("-", ref.split("/")[-1]) or "root")
            name, i = base, 0
            taken = set(self._rules) | set(self._ref_names.values())
            while name in taken:
                i += 1
                name = f"{base}{i}"
            self._ref_names[ref] = name
            actual = self.visit(self._refs[ref], name)
            if actual != name:
                self._rules[name] = actual
        return name

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if name == "char":
            rule = _JSON_CHAR
        return super()._add_primitive(name, rule)  # type: ignore[no-any-return]

    def visit(self, schema: Any, name: str) -> str:
        if schema is True:
            schema = {}
        rule_name = name or "root"
        kind = schema.get("type")
        if isinstance(kind, list) and len(schema) > 1:  # keep the constraints in each branch
            branches = [{**schema, "type": t} for t in kind]
            return self.visit({"anyOf": branches}, name)
        if kind == "integer" and any(b in schema for b in _BOUNDS):
            lo, hi = _bounds(schema)
            return self._add_rule(rule_name, f"({int_range(lo, hi)}) space")  # type: ignore[no-any-return]
        if kind == "number" and any(b in schema for b in _BOUNDS):
            if set(schema) & set(_BOUNDS) == {"minimum"} and schema["minimum"] == 0:
                self._add_primitive("number", PRIMITIVE_RULES["number"])
                body = PRIMITIVE_RULES["number"].content.replace('"-"? ', "", 1)
                return self._add_rule(rule_name, body)  # type: ignore[no-any-return]
            raise SchemaNotSupported(
                "bounds on a 'number' (only 'minimum': 0 is supported; use an 'integer' for "
                "other ranges)"
            )
        if kind == "string" and ("minLength" in schema or "maxLength" in schema):
            if "pattern" in schema or "format" in schema:
                raise SchemaNotSupported("'minLength'/'maxLength' together with a pattern/format")
            char = self._add_primitive("char", _JSON_CHAR)
            reps = _repetition(schema.get("minLength", 0), schema.get("maxLength"))
            return self._add_rule(rule_name, rf'"\"" {char}{reps} "\"" space')  # type: ignore[no-any-return]
        items = schema.get("items")
        if kind in (None, "array") and isinstance(items, dict) and "prefixItems" not in schema:
            item = self.visit(items, f"{name}{'-' if name else ''}item")
            low, high = schema.get("minItems", 0), schema.get("maxItems")
            if high == 0:
                body = '"[" space "]" space'
            elif low == 0:
                more = _repetition(0, None if high is None else high - 1)
                body = f'"[" space ({item} ("," space {item}){more})? "]" space'
            else:
                more = _repetition(low - 1, None if high is None else high - 1)
                body = f'"[" space {item} ("," space {item}){more} "]" space'
            return self._add_rule(rule_name, body)  # type: ignore[no-any-return]
        return super().visit(schema, name)  # type: ignore[no-any-return]


def _repetition(low: int, high: int | None) -> str:
    if high is not None and high < low:
        raise SchemaNotSupported(f"an empty length range [{low}, {high}]")
    if max(low, high or 0) > MAX_REPETITION:
        raise SchemaNotSupported(f"lengths or item counts above {MAX_REPETITION}")
    if high is None:
        return "*" if low == 0 else f"{{{low},}}"
    return f"{{{low},{high}}}"


def _check_supported(schema: Any, path: str, depth: int = 0) -> None:
    """Refuses keywords no grammar here enforces (see the module docstring)."""
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaNotSupported(f"nesting deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(schema, bool):
        if schema is False:
            raise SchemaNotSupported(f"a 'false' schema at '{path or '/'}'")
        return
    if not isinstance(schema, dict):
        return
    for keyword in schema:
        if keyword in _UNSUPPORTED_KEYWORDS:
            raise SchemaNotSupported(f"the keyword '{keyword}' (at '{path or '/'}')")
    ref = schema.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise SchemaNotSupported(f"the remote reference '{ref}' (only local '#/...' refs)")
    if "pattern" in schema and "format" in schema:
        raise SchemaNotSupported(f"'pattern' together with 'format' (at '{path or '/'}')")
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not (pattern.startswith("^") and pattern.endswith("$")):
        raise SchemaNotSupported(f"the pattern {pattern!r} (patterns must be anchored: '^...$')")
    properties = schema.get("properties")
    for required in schema.get("required", ()):
        if not isinstance(properties, dict) or required not in properties:
            raise SchemaNotSupported(
                f"the required property '{required}' has no schema in 'properties'"
            )
    for member in schema.get("allOf", ()):
        if isinstance(member, dict) and not ({"properties", "$ref", "anyOf"} & set(member)):
            raise SchemaNotSupported("'allOf' other than of object schemas with properties")
    for key in _SCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            _check_supported(sub, f"{path}/{key}/{name}", depth + 1)
    for key in _SCHEMA_LISTS:
        for index, sub in enumerate(schema.get(key) or ()):
            _check_supported(sub, f"{path}/{key}/{index}", depth + 1)
    for key in _SCHEMA_VALUES:
        sub = schema.get(key)
        if isinstance(sub, dict):
            _check_supported(sub, f"{path}/{key}", depth + 1)
        elif key == "items" and isinstance(sub, list):
            for index, item in enumerate(sub):
                _check_supported(item, f"{path}/items/{index}", depth + 1)


class GrammarBuilder:
    """Builds one grammar out of several schemas (a tool call grammar holds each function's
    arguments) plus rules of its own; the JSON rules (`space`, `string`, ...) are shared."""

    def __init__(self) -> None:
        self._converter = _Converter()
        self._schemas = 0

    def add_schema(self, schema: dict[str, Any], name: str, *, param: str | None = None) -> str:
        """Adds the rules of `schema` under the rule name `name` (letters, digits, '-');
        returns the rule that matches one JSON value satisfying it."""
        try:
            _check_supported(schema, "")
            self._schemas += 1
            schema = json.loads(json.dumps(schema))  # resolve_refs rewrites refs in place
            resolved = self._converter.resolve_refs(schema, f"schema{self._schemas}")
            return self._converter.visit(resolved, name)
        except SchemaNotSupported as exc:
            exc.detail.param = param
            raise
        except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise SchemaNotSupported(str(exc) or type(exc).__name__, param=param) from None

    def add_rule(self, name: str, body: str) -> str:
        return self._converter._add_rule(name, body)  # type: ignore[no-any-return]

    def primitive(self, name: str) -> str:
        """A JSON primitive rule of the converter: `string`, `value`, `object`, ..."""
        rule = _JSON_CHAR if name == "char" else PRIMITIVE_RULES[name]
        return self._converter._add_primitive(name, rule)

    def grammar(self, root: str | None = None) -> str:
        """The whole grammar; `root` replaces (or sets) the `root` rule's body."""
        if root is not None:
            self._converter._rules["root"] = root
        text = self._converter.format_grammar()
        if len(text) > MAX_GRAMMAR_CHARS:
            raise SchemaNotSupported(f"a grammar larger than {MAX_GRAMMAR_CHARS} characters")
        return text  # type: ignore[no-any-return]


def schema_grammar(schema: dict[str, Any], *, param: str | None = None) -> str:
    """GBNF (root rule `root`) for one JSON value satisfying `schema`, compiled by llama.cpp.

    Raises `SchemaNotSupported` (an `APIError` 400 with `param`) when it cannot be enforced.
    """
    builder = GrammarBuilder()
    root = builder.add_schema(schema, "root", param=param)
    if root != "root":
        builder.add_rule("root", root)
    grammar = builder.grammar()
    check_grammar(grammar, param=param)
    return grammar


def json_object_grammar() -> str:
    """Any JSON object (`response_format: {"type": "json_object"}`)."""
    return JSON_OBJECT_GRAMMAR


def _object_grammar() -> str:
    builder = GrammarBuilder()
    builder.add_rule("root", builder.primitive("object"))
    return builder.grammar()


JSON_OBJECT_GRAMMAR = _object_grammar()


def check_grammar(grammar: str, *, param: str | None = None) -> None:
    """Compiles `grammar` in llama.cpp (no model needed) or raises `SchemaNotSupported`.

    It is quick (a parse) but synchronous: call it off the event loop for large grammars.
    """
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise SchemaNotSupported("llama.cpp refused the grammar made from it", param=param)
    llama_cpp.llama_sampler_free(sampler)


def validate_output(text: str, schema: dict[str, Any] | None = None) -> Any:
    """The JSON value in `text`, checked against `schema` (None: any JSON object).

    Raises `InvalidOutput` with the reason; the routes use it as a last check, the tests as the
    proof that grammar-constrained output satisfies its schema.
    """
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidOutput(f"not JSON: {exc}") from None
    if schema is None:
        if not isinstance(value, dict):
            raise InvalidOutput("not a JSON object")
        return value
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        raise InvalidOutput(f"does not satisfy the schema: {error.message}")
    return value
