"""Tool calls without the model: template capability probes, prompts (native and generic),
forced-call grammars compiled by llama.cpp, and the incremental parser (the same events
whatever the chunking; its deltas accumulate into the right calls in the `openai` SDK)."""

# ruff: noqa: E501  (chat templates are quoted verbatim, long lines included)
from __future__ import annotations

import itertools
import json
from typing import Any

import openai.types.chat as sdk_chat
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from llamanet.node.errors import APIError
from llamanet.node.structured import check_grammar
from llamanet.node.tool_parser import ContentDelta, ToolCallParser, parse_tool_output
from llamanet.node.tools import (
    ToolFormat,
    plan_tools,
    render_prompt,
    template_caps,
    tool_specs,
)
from llamanet.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ToolCallDelta,
)

# The default model's template (SmolLM2-135M-Instruct's `tokenizer.chat_template`), verbatim.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Trimmed versions of real tool templates: the constructs that matter for detection/rendering.
HERMES = """{%- if tools %}<|im_start|>system
# Tools
<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% for tc in message.tool_calls %}<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>{{ message.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

LLAMA3 = """{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

{%- for tc in message.tool_calls %}{"name": "{{ tc.function.name }}", "parameters": {{ tc.function.arguments | tojson }}}{% endfor %}<|eot_id|>
{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{%- if tools and loop.last %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}
{{ message.content }}<|eot_id|>
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

MISTRAL = """{{- bos_token }}{%- for message in messages %}
{%- if message.role == 'user' %}{% if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ message.content }}[/INST]
{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS][{% for tc in message.tool_calls %}{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}, "id": "{{ tc.id }}"}{% endfor %}]{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS]{"content": {{ message.content | tojson }}, "call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}
{%- endif %}{%- endfor %}"""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
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
ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
]


def _request(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"messages": ROUND_TRIP, "tools": [WEATHER, ADD], **extra}
    )


def _plan(template: str | None, **extra: Any) -> Any:
    req = _request(**extra)
    return plan_tools(
        req.messages,
        tool_specs(req.tools),
        req.tool_choice_mode(),
        parallel=req.parallel_tool_calls is not False,
        template=template,
    )


# --------------------------------------------------------------------------- templates


def test_the_default_models_template_has_no_tool_support() -> None:
    caps = template_caps(SMOLLM2)
    assert caps.format is ToolFormat.GENERIC
    assert not caps.tools and not caps.tool_calls
    assert caps.tool_role and caps.system_role  # ChatML renders any role


@pytest.mark.parametrize(
    ("template", "fmt"),
    [(HERMES, ToolFormat.HERMES), (LLAMA3, ToolFormat.LLAMA3), (MISTRAL, ToolFormat.MISTRAL)],
)
def test_native_templates_are_recognised(template: str, fmt: ToolFormat) -> None:
    caps = template_caps(template)
    assert caps.format is fmt and caps.tools and caps.tool_calls


def test_no_template_is_generic() -> None:
    assert template_caps(None).format is ToolFormat.GENERIC


def test_generic_prompt_lists_tools_and_renders_the_round_trip() -> None:
    plan = _plan(SMOLLM2)
    assert plan.format is ToolFormat.GENERIC and plan.mode == "auto"
    system = plan.messages[0]
    assert system["role"] == "system" and "get_weather" in system["content"]
    assert '{"response"' in system["content"]  # auto: a direct answer is possible
    call = json.loads(plan.messages[2]["content"])
    assert call == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    result = json.loads(plan.messages[3]["content"])["tool_response"]
    assert result == {"tool_call_id": "call_1", "name": "get_weather", "content": "sunny, 21C"}
    prompt = render_prompt(SMOLLM2, plan.messages)
    assert "SmolLM" not in prompt  # our system prompt replaces the template's default one
    assert prompt.endswith("<|im_start|>assistant\n")
    assert plan.grammar is not None and "response" in plan.grammar
    check_grammar(plan.grammar)


def test_generic_prompt_merges_into_an_existing_system_message() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "system", "content": "Be brief."}, *ROUND_TRIP],
            "tools": [WEATHER],
        }
    )
    plan = plan_tools(req.messages, tool_specs(req.tools), "auto", template=SMOLLM2)
    assert plan.messages[0]["content"].startswith("Be brief.\n\n")
    assert sum(m["role"] == "system" for m in plan.messages) == 1


def test_hermes_prompt_goes_through_the_template() -> None:
    plan = _plan(HERMES)
    assert plan.format is ToolFormat.HERMES
    assert plan.template_tools and plan.template_tools[0]["function"]["name"] == "get_weather"
    prompt = render_prompt(HERMES, plan.messages, tools=plan.template_tools)
    assert "<tools>" in prompt and '"name": "add"' in prompt
    assert '"arguments": {"city": "Paris"}' in prompt  # arguments rendered as an object
    assert "<tool_response>sunny, 21C</tool_response>" in prompt
    # auto with a native syntax: no grammar up front, a lazy one for an engine that can
    assert plan.grammar is None and plan.triggers == ("<tool_call>",)
    assert plan.lazy_grammar is not None
    check_grammar(plan.lazy_grammar)


@pytest.mark.parametrize("template", [SMOLLM2, HERMES, LLAMA3, MISTRAL])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_calls_have_compiling_grammars(template: str, parallel: bool) -> None:
    required = _plan(template, tool_choice="required", parallel_tool_calls=parallel)
    assert required.grammar is not None and "add" in required.grammar
    check_grammar(required.grammar)
    named = _plan(
        template,
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=parallel,
    )
    assert named.mode == "add"
    assert named.grammar is not None and '"\\"add\\""' in named.grammar
    assert "get_weather" not in named.grammar
    check_grammar(named.grammar)


def test_tool_choice_none_renders_history_without_tools() -> None:
    plan = _plan(SMOLLM2, tool_choice="none")
    assert plan.mode == "none" and plan.grammar is None and not plan.parses_calls
    assert all("get_weather" not in m["content"] or m["role"] != "system" for m in plan.messages)


def test_response_format_with_auto_tools_is_a_400() -> None:
    req = _request()
    with pytest.raises(APIError) as caught:
        plan_tools(
            req.messages, tool_specs(req.tools), "auto", template=SMOLLM2, json_grammar="root ::= x"
        )
    assert caught.value.status == 400 and caught.value.detail.param == "response_format"


def test_a_tool_schema_no_grammar_enforces_is_a_400_naming_the_tool() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "not": {"required": ["a"]}}},
    }
    req = ChatCompletionRequest.model_validate(
        {"messages": ROUND_TRIP[:1], "tools": [WEATHER, tool], "tool_choice": "required"}
    )
    with pytest.raises(APIError) as caught:
        plan_tools(req.messages, tool_specs(req.tools), "required", template=SMOLLM2)
    assert caught.value.status == 400
    assert caught.value.detail.param == "tools.1.function.parameters"


def test_a_template_that_cannot_render_is_a_400() -> None:
    broken = "{{ raise_exception('only user and assistant roles are supported') }}"
    with pytest.raises(APIError) as caught:
        render_prompt(broken, [{"role": "user", "content": "x"}])
    assert caught.value.status == 400 and "only user and assistant" in caught.value.detail.message


# --------------------------------------------------------------------------- the parser


def _ids() -> Any:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _events(fmt: ToolFormat, text: str, step: int, names: tuple[str, ...]) -> list[Any]:
    parser = ToolCallParser(fmt, names, new_id=_ids())
    events: list[Any] = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i : i + step])
    return events + parser.finish()


def _summary(events: list[Any]) -> tuple[str, dict[int, str], dict[int, str]]:
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            if event.function and event.function.name:
                names[event.index] = event.function.name
            if event.function and event.function.arguments:
                arguments[event.index] = arguments.get(event.index, "") + event.function.arguments
    return content, names, arguments


NAMES = ("get_weather", "add")
CASES = [
    (
        ToolFormat.GENERIC,
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2}}]}',
        "",
        {0: '{"city": "Paris"}', 1: '{"a": 1, "b": 2}'},
    ),
    (
        ToolFormat.GENERIC,
        '{"response": "Hi \\"you\\" \\u00e9\\ud83d\\ude00\\n"}',
        'Hi "you" é😀\n',
        {},
    ),
    (ToolFormat.GENERIC, "not JSON at all", "not JSON at all", {}),
    (ToolFormat.GENERIC, '{"answer": 1}', '{"answer": 1}', {}),
    (
        ToolFormat.HERMES,
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"arguments": {"a": 1, "b": 2}, "name": "add"}\n</tool_call>\n',
        "Checking.\n",
        {0: '{"city": "Paris"}', 1: '{"a": 1, "b": 2}'},
    ),
    (
        ToolFormat.HERMES,
        'a <tool_ca b <tool_call>{"name": "nope", "arguments": {}}</tool_call> c',
        'a <tool_ca b <tool_call>{"name": "nope", "arguments": {}}</tool_call> c',
        {},
    ),
    (
        ToolFormat.LLAMA3,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        {0: '{"city": "Paris"}'},
    ),
    (
        ToolFormat.LLAMA3,
        '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}',
        "",
        {0: '{"a": 1, "b": 2}'},
    ),
    (ToolFormat.LLAMA3, '{"answer": 42} is JSON', '{"answer": 42} is JSON', {}),
    (ToolFormat.LLAMA3, "Plain words.", "Plain words.", {}),
    (
        ToolFormat.MISTRAL,
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2}}]',
        "",
        {0: '{"city": "Paris"}', 1: '{"a": 1, "b": 2}'},
    ),
    (  # cut by max_tokens: the call stays, with the arguments it got
        ToolFormat.GENERIC,
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par',
        "",
        {0: '{"city": "Par'},
    ),
]


@pytest.mark.parametrize(("fmt", "text", "content", "arguments"), CASES, ids=range(len(CASES)))
def test_parser_gives_the_same_answer_whatever_the_chunking(
    fmt: ToolFormat, text: str, content: str, arguments: dict[int, str]
) -> None:
    whole = _summary(_events(fmt, text, len(text), NAMES))
    assert whole[0] == content
    assert whole[2] == arguments
    for step in (1, 2, 3, 5, 8, 13):
        assert _summary(_events(fmt, text, step, NAMES)) == whole, step


def test_a_call_delta_comes_first_with_id_type_and_name() -> None:
    events = _events(ToolFormat.GENERIC, CASES[0][1], 4, NAMES)
    headers = [e for e in events if isinstance(e, ToolCallDelta) and e.id is not None]
    assert [(h.index, h.id, h.type, h.function.name) for h in headers] == [  # type: ignore[union-attr]
        (0, "call_0", "function", "get_weather"),
        (1, "call_1", "function", "add"),
    ]
    first = next(i for i, e in enumerate(events) if isinstance(e, ToolCallDelta))
    assert events[first].id == "call_0"  # the name comes before any argument piece


def test_parse_tool_output() -> None:
    content, calls = parse_tool_output(CASES[0][1], ToolFormat.GENERIC, NAMES)
    assert content is None
    assert [c.function.name for c in calls] == ["get_weather", "add"]
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls)
    assert json.loads(calls[1].function.arguments) == {"a": 1, "b": 2}
    content, calls = parse_tool_output("Hello", ToolFormat.HERMES, NAMES)
    assert (content, calls) == ("Hello", [])


def test_stream_deltas_accumulate_in_the_openai_sdk() -> None:
    """The chunks a route would build from parser events, through the SDK's own accumulator."""
    state = ChatCompletionStreamState()
    text = CASES[4][1]
    parser = ToolCallParser(ToolFormat.HERMES, NAMES)

    def chunk(delta: ChatDelta, finish: str | None = None) -> None:
        body = ChatCompletionChunk(
            id="chatcmpl-1",
            created=1,
            model="m",
            choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
        )
        state.handle_chunk(sdk_chat.ChatCompletionChunk.model_validate(body.model_dump()))

    chunk(ChatDelta(role="assistant", content=""))
    for i in range(0, len(text), 3):
        for event in parser.feed(text[i : i + 3]):
            if isinstance(event, ContentDelta):
                chunk(ChatDelta(content=event.text))
            else:
                chunk(ChatDelta(tool_calls=[event]))
    assert parser.finish() == []
    chunk(ChatDelta(), "tool_calls")
    message = state.get_final_completion().choices[0].message
    assert message.content == "Checking.\n"
    calls = message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "add"]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert calls[0].id == parser.calls[0].id
