"""Tool calls, the prompt side: which tool-call syntax a model's chat template speaks, how tools
and the tool history enter the prompt, and the grammar that forces a call.

Four syntaxes (`ToolFormat`), found by reading the GGUF's Jinja chat template:
- `hermes` (Hermes 2 Pro, Qwen 2.5/3): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
- `llama3` (Llama 3.1+): one JSON object `{"name": ..., "parameters": {...}}`;
- `mistral` (Mistral Nemo and later): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`;
- `generic`, for every template without tool support (the default SmolLM2 model's included):
  the tools are listed in the system prompt and the model answers with a JSON envelope,
  `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or, in `auto` mode,
  `{"response": "..."}` (the design of llama.cpp's generic handler). The envelope is always
  grammar-constrained, so even in `auto` mode a small model's answer is parseable.

With a native syntax the template renders tools and history itself (`tools=` and messages with
`tool_calls` / `tool` roles, as Hugging Face templates expect); `required` and a named function
get a grammar in that syntax; `auto` leaves the model free and the parser recognises a call
(a lazy grammar, applied once a call begins, is in `ToolPlan.lazy_grammar` / `triggers` for an
engine that supports it). Arguments always come from the function's JSON schema through
`llamanet.node.structured`, so a forced call's arguments validate against it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from llamanet.node.errors import APIError
from llamanet.node.structured import GrammarBuilder, check_grammar
from llamanet.protocol import (
    ChatMessage,
    ChatTool,
    FunctionDefinition,
    ResponsesFunctionTool,
)

__all__ = [
    "TemplateCaps",
    "ToolFormat",
    "ToolPlan",
    "ToolSpec",
    "plan_tools",
    "render_prompt",
    "template_caps",
    "tool_specs",
]


class ToolFormat(StrEnum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    GENERIC = "generic"


@dataclass(frozen=True)
class ToolSpec:
    """A function tool, whichever API declared it."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    param: str  # where it was declared, for errors: "tools.0.function.parameters"

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


def tool_specs(tools: Sequence[ChatTool | ResponsesFunctionTool] | None) -> list[ToolSpec]:
    specs = []
    for index, tool in enumerate(tools or ()):
        fn: FunctionDefinition
        if isinstance(tool, ChatTool):
            fn, where = tool.function, f"tools.{index}.function.parameters"
        else:
            fn, where = tool, f"tools.{index}.parameters"
        specs.append(ToolSpec(fn.name, fn.description, fn.parameters or {"type": "object"}, where))
    return specs


# --------------------------------------------------------------------------- the template


@dataclass(frozen=True)
class TemplateCaps:
    """What a chat template does with tools (found by rendering probes through it)."""

    format: ToolFormat
    tools: bool  # renders the `tools` it is given
    tool_calls: bool  # renders an assistant message's `tool_calls`
    tool_role: bool  # renders `tool` messages
    system_role: bool  # renders `system` messages


_PROBE_TOOL = "llamanet_probe_tool"
_PROBE_CALL = "llamanet_probe_call"
_PROBE_RESULT = "llamanet-probe-result"
_PROBE_SYSTEM = "llamanet-probe-system"


def _formatter(template: str) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")


def _renders(template: str, needle: str, **kwargs: Any) -> bool:
    try:
        return needle in _formatter(template)(**kwargs).prompt
    except Exception:  # a template that raises on this input does not support it
        return False


@lru_cache(maxsize=16)
def template_caps(template: str | None) -> TemplateCaps:
    """The tool capabilities of a Jinja chat template (None: the engine's fallback ChatML)."""
    if not template:
        return TemplateCaps(ToolFormat.GENERIC, False, False, True, True)
    user = {"role": "user", "content": "hi"}
    probe_tool = {
        "type": "function",
        "function": {"name": _PROBE_TOOL, "description": "", "parameters": {"type": "object"}},
    }
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": _PROBE_CALL, "arguments": {}},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": _PROBE_RESULT}
    tools = _renders(template, _PROBE_TOOL, messages=[user], tools=[probe_tool])
    tool_calls = _renders(template, _PROBE_CALL, messages=[user, call], tools=[probe_tool])
    tool_role = _renders(template, _PROBE_RESULT, messages=[user, call, result], tools=[probe_tool])
    system = _renders(
        template, _PROBE_SYSTEM, messages=[{"role": "system", "content": _PROBE_SYSTEM}, user]
    )
    fmt = ToolFormat.GENERIC
    if tools and tool_calls:
        if "<tool_call>" in template:
            fmt = ToolFormat.HERMES
        elif "[TOOL_CALLS]" in template:
            fmt = ToolFormat.MISTRAL
        elif "<|start_header_id|>" in template and "ipython" in template:
            fmt = ToolFormat.LLAMA3
    return TemplateCaps(fmt, tools, tool_calls, tool_role, system)


def render_prompt(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Renders a conversation (and, for a native template, its tools) through the template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
    try:
        prompt = formatter(messages=messages, tools=tools).prompt  # type: ignore[arg-type]
        return str(prompt)
    except Exception as exc:
        raise APIError(
            400,
            f"The model's chat template cannot render this conversation: {exc}",
            param="messages",
            code="template_error",
        ) from None


# --------------------------------------------------------------------------- the plan


@dataclass
class ToolPlan:
    """How one request's tools become a prompt, a grammar, and a parser's expectations."""

    format: ToolFormat
    mode: str  # "none" | "auto" | "required" | the forced function's name
    parallel: bool
    messages: list[dict[str, Any]]  # for the chat template
    template_tools: list[dict[str, Any]] | None  # `tools=` for a native template
    names: list[str] = field(default_factory=list)
    grammar: str | None = None  # applied from the first token (forced call, generic envelope)
    lazy_grammar: str | None = None  # applied once a trigger appears (native `auto`)
    triggers: tuple[str, ...] = ()

    @property
    def parses_calls(self) -> bool:
        return self.mode != "none" and bool(self.names)


def _arguments(call: Any) -> Any:
    """A history call's arguments as JSON (templates want an object, OpenAI sends text)."""
    try:
        return json.loads(call.function.arguments)
    except (json.JSONDecodeError, TypeError):
        return call.function.arguments


def _native_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.text()}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": _arguments(call)},
                }
                for call in message.tool_calls
            ]
            names.update({call.id: call.function.name for call in message.tool_calls})
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id
            item["name"] = names.get(message.tool_call_id or "", "")
        out.append(item)
    return out


def _generic_system_prompt(specs: list[ToolSpec], mode: str, parallel: bool) -> str:
    listed = json.dumps(
        [
            {"name": s.name, "description": s.description or "", "parameters": s.parameters}
            for s in specs
        ],
        ensure_ascii=False,
    )
    many = "one or more calls" if parallel else "exactly one call"
    envelope = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
    lines = [
        "You can call these tools. Each has a name, a description and the JSON schema of its "
        f"arguments:\n{listed}",
        f"To call tools, answer with JSON only, {many}: {envelope}",
    ]
    if mode == "auto":
        lines.append('To answer the user directly instead, reply with JSON: {"response": "..."}')
    elif mode == "required":
        lines.append("You must call a tool now.")
    else:
        lines.append(f"You must call the tool '{mode}' now.")
    return "\n".join(lines)


def _generic_messages(
    messages: list[ChatMessage], system: str | None, caps: TemplateCaps
) -> list[dict[str, Any]]:
    """History in the generic format: calls as the JSON envelope the model itself writes,
    results as `tool_response` JSON (in `tool` messages if the template renders them, else as
    user messages), the tool list in the system prompt."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.role, message.text()
        if message.tool_calls:
            calls = [
                {"name": call.function.name, "arguments": _arguments(call)}
                for call in message.tool_calls
            ]
            names.update({call.id: call.function.name for call in message.tool_calls})
            content = json.dumps({"tool_calls": calls}, ensure_ascii=False)
        elif role == "tool":
            response = {
                "tool_call_id": message.tool_call_id,
                "name": names.get(message.tool_call_id or "", ""),
                "content": content,
            }
            content = json.dumps({"tool_response": response}, ensure_ascii=False)
            role = "tool" if caps.tool_role else "user"
        elif role == "developer":
            role = "system"
        out.append({"role": role, "content": content})
    if system:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}"}
        elif caps.system_role:
            out.insert(0, {"role": "system", "content": system})
        else:
            first = out[0] if out else {"role": "user", "content": ""}
            out[0:1] = [{"role": first["role"], "content": f"{system}\n\n{first['content']}"}]
    return out


def plan_tools(
    messages: list[ChatMessage],
    tools: list[ToolSpec],
    mode: str,
    *,
    parallel: bool = True,
    template: str | None,
    json_grammar: str | None = None,
) -> ToolPlan:
    """The prompt messages, grammar and syntax for one request.

    `mode` is `ChatCompletionRequest.tool_choice_mode()` (none/auto/required/a name);
    `template` the GGUF's `tokenizer.chat_template`; `json_grammar` the response_format grammar,
    if any: it constrains an answer without tools (`mode` none); a forced call is a call, not
    content, so it does not apply there; with `auto` it is a 400 (an `auto` answer is either a
    call or text, and one grammar cannot hold both here). Raises `APIError` 400 for a tool whose
    schema cannot be enforced.
    """
    caps = template_caps(template)
    names = [spec.name for spec in tools]
    if json_grammar is not None and tools and mode == "auto":
        raise APIError(
            400,
            "response_format together with tools is supported with tool_choice 'none', "
            "'required' or a named function, not 'auto'.",
            param="response_format",
            code="unsupported_combination",
        )
    if mode == "none" or not tools:
        native = caps.format is not ToolFormat.GENERIC
        history = _native_messages(messages) if native else _generic_messages(messages, None, caps)
        return ToolPlan(caps.format, "none", parallel, history, None, [], json_grammar)
    forced = (
        [spec for spec in tools if spec.name == mode] if mode not in ("auto", "required") else tools
    )
    if caps.format is ToolFormat.GENERIC:
        system = _generic_system_prompt(tools, mode, parallel)
        grammar = _generic_grammar(forced, auto=mode == "auto", parallel=parallel)
        return ToolPlan(
            caps.format,
            mode,
            parallel,
            _generic_messages(messages, system, caps),
            None,
            names,
            grammar,
        )
    plan = ToolPlan(
        caps.format,
        mode,
        parallel,
        _native_messages(messages),
        [spec.as_openai() for spec in tools],
        names,
    )
    calls = _native_grammar(caps.format, forced, parallel=parallel)
    if mode == "auto":
        plan.lazy_grammar, plan.triggers = calls, _TRIGGERS[caps.format]
    else:
        plan.grammar = calls
    return plan


# --------------------------------------------------------------------------- grammars


_TRIGGERS = {
    ToolFormat.HERMES: ("<tool_call>",),
    ToolFormat.LLAMA3: ('{"name"',),
    ToolFormat.MISTRAL: ("[TOOL_CALLS]",),
    ToolFormat.GENERIC: (),
}
ARGUMENT_KEYS = {ToolFormat.LLAMA3: "parameters"}  # the others say "arguments"


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF literal: JSON string escapes are GBNF escapes


def _call_rules(builder: GrammarBuilder, specs: list[ToolSpec], arguments_key: str) -> str:
    """A rule matching one call object `{"name": "<fn>", "<arguments_key>": <args>}`."""
    alternatives = []
    for index, spec in enumerate(specs):
        args = builder.add_schema(spec.parameters, f"tool{index}-args", param=spec.param)
        name = _literal(json.dumps(spec.name))
        key = _literal(json.dumps(arguments_key))
        alternatives.append(
            builder.add_rule(
                f"tool{index}-call",
                f'"{{" space {_literal(json.dumps("name"))} space ":" space {name} space "," '
                f'space {key} space ":" space {args} "}}" space',
            )
        )
    return builder.add_rule("call", " | ".join(alternatives))


def _finish(builder: GrammarBuilder, root: str, specs: list[ToolSpec]) -> str:
    grammar = builder.grammar(root)
    check_grammar(grammar, param=specs[0].param if len(specs) == 1 else "tools")
    return grammar


def _generic_grammar(specs: list[ToolSpec], *, auto: bool, parallel: bool) -> str:
    builder = GrammarBuilder()
    call = _call_rules(builder, specs, "arguments")
    calls = f'{call} ("," space {call})*' if parallel else call
    envelope = builder.add_rule(
        "tool-calls",
        f'"{{" space {_literal(json.dumps("tool_calls"))} space ":" space "[" space {calls} '
        f'"]" space "}}" space',
    )
    if not auto:
        return _finish(builder, envelope, specs)
    string = builder.primitive("string")
    response = builder.add_rule(
        "response",
        f'"{{" space {_literal(json.dumps("response"))} space ":" space {string} "}}" space',
    )
    return _finish(builder, f"{envelope} | {response}", specs)


def _native_grammar(fmt: ToolFormat, specs: list[ToolSpec], *, parallel: bool) -> str:
    builder = GrammarBuilder()
    call = _call_rules(builder, specs, ARGUMENT_KEYS.get(fmt, "arguments"))
    if fmt is ToolFormat.HERMES:
        one = builder.add_rule("tagged-call", f'"<tool_call>" "\\n"? {call} "\\n"? "</tool_call>"')
        root = f'{one} ("\\n" {one})*' if parallel else one
    elif fmt is ToolFormat.MISTRAL:
        calls = f'{call} ("," space {call})*' if parallel else call
        root = f'"[TOOL_CALLS]" "[" space {calls} "]"'
    else:  # llama3: one call per turn
        root = call
    return _finish(builder, root, specs)
