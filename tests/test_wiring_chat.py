"""Chat completions honour every answer-shaping field (fast tier, `FakeEngine`, official SDK).

What reaches the engine per field (grammar, logit bias, logprobs, seed, n, budget, stops), the
shapes the SDK parses (`ChatCompletion`, streamed chunks through the SDK's own stream helper and
accumulator), and the 400s for what cannot be honoured. The engine is scripted: the grammar is
not applied here (tests/test_openai_capabilities.py runs the real model), so each test scripts
an answer the grammar would allow and checks that the grammar sent is the one that allows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fakes import FakeEngine
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from wiring import ADD, USER, WEATHER, error_of, events, node, pieces

from llamanet.node.structured import JSON_OBJECT_GRAMMAR, schema_grammar
from llamanet.node.tools import plan_tools, tool_specs
from llamanet.protocol import ChatCompletionRequest

CHAT = "/v1/chat/completions"


class City(pydantic.BaseModel):
    name: str
    population: int


# --------------------------------------------------------------------------- structured output


async def test_parse_returns_the_model_object_and_the_schema_grammar_reached_the_engine(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(pieces=pieces('{"name": "Paris", "population": 2102650}'))
    async with node(tmp_path, engine) as n:
        done = await n.sdk.chat.completions.parse(
            model="fake-model",
            messages=USER,
            response_format=City,  # type: ignore[arg-type]
        )
        parsed = done.choices[0].message.parsed
        assert parsed == City(name="Paris", population=2102650)
        schema = n.sent[-1]["response_format"]["json_schema"]["schema"]
        assert n.params.grammar == schema_grammar(schema)


async def test_json_object_gets_the_json_object_grammar(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces('{"a": 1}'))) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model", messages=USER, response_format={"type": "json_object"}
        )
        assert json.loads(done.choices[0].message.content or "") == {"a": 1}
        assert n.params.grammar == JSON_OBJECT_GRAMMAR


async def test_text_format_and_no_format_get_no_grammar(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        await n.sdk.chat.completions.create(
            model="fake-model", messages=USER, response_format={"type": "text"}
        )
        assert n.params.grammar is None
        await n.sdk.chat.completions.create(model="fake-model", messages=USER)
        assert n.params.grammar is None


async def test_a_schema_no_grammar_enforces_is_a_400(tmp_path: Path) -> None:
    body = {
        "messages": USER,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": {"type": "array", "uniqueItems": True}},
        },
    }
    async with node(tmp_path) as n:
        err = error_of(await n.http.post(CHAT, json=body))
        assert err["code"] == "unsupported_schema" and "uniqueItems" in err["message"]
        assert err["param"] == "response_format.json_schema.schema"
        assert n.engine.submitted == []


# --------------------------------------------------------------------------- tools

CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'


def _plan(**fields: Any) -> Any:
    req = ChatCompletionRequest.model_validate({"messages": USER, **fields})
    return plan_tools(
        req.messages,
        tool_specs(req.tools),
        req.tool_choice_mode(),
        parallel=req.parallel_tool_calls is not False,
        template=None,
    )


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
)
async def test_a_forced_call_is_grammar_forced_and_parsed_into_tool_calls(
    tmp_path: Path, choice: Any
) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces(CALL))) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER, ADD],  # type: ignore[list-item]
            tool_choice=choice,
        )
        ChatCompletion.model_validate(done.model_dump())
        choice0 = done.choices[0]
        assert choice0.finish_reason == "tool_calls" and choice0.message.content is None
        calls = choice0.message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
        assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert calls[0].id.startswith("call_")
        one = isinstance(choice, dict)  # a named function: one call unless asked for more
        expected = _plan(
            tools=[WEATHER, ADD], tool_choice=choice, parallel_tool_calls=not one
        ).grammar
        assert n.params.grammar == expected and "tool_calls" in expected
        assert "get_weather" in n.prompt and "You must call" in n.prompt


async def test_parallel_tool_calls_false_forces_one_call(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces(CALL))) as n:
        await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
        )
        one = _plan(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False).grammar
        many = _plan(tools=[WEATHER], tool_choice="required").grammar
        assert n.params.grammar == one != many
        assert "exactly one call" in n.prompt


async def test_auto_answers_with_text_or_a_call(tmp_path: Path) -> None:
    engine = FakeEngine(pieces=pieces('{"response": "It is \\"sunny\\"."}'))
    async with node(tmp_path, engine) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert done.choices[0].message.content == 'It is "sunny".'
        assert done.choices[0].finish_reason == "stop" and not done.choices[0].message.tool_calls
        assert n.params.grammar == _plan(tools=[WEATHER]).grammar  # the generic envelope
        engine.pieces = pieces(CALL)
        done = await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert done.choices[0].finish_reason == "tool_calls"


async def test_tool_choice_none_describes_no_tools_and_parses_nothing(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(pieces=pieces(CALL))) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="none",
        )
        assert done.choices[0].message.content == CALL and done.choices[0].finish_reason == "stop"
        assert n.params.grammar is None and "get_weather" not in n.prompt


async def test_streamed_tool_calls_accumulate_in_the_sdk_stream_helper(tmp_path: Path) -> None:
    two = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2}}]}'
    )
    async with node(tmp_path, FakeEngine(pieces=pieces(two, 2))) as n:
        async with n.sdk.chat.completions.stream(
            model="fake-model",
            messages=USER,
            tools=[WEATHER, ADD],  # type: ignore[list-item]
            tool_choice="required",
        ) as stream:
            final = await stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather", "add"]
        assert [json.loads(c.function.arguments) for c in calls] == [
            {"city": "Paris"},
            {"a": 1, "b": 2},
        ]
        raw = events(await n.http.post(CHAT, json={**n.sent[-1], "stream": True}))
        deltas = [c["choices"][0]["delta"] for c in raw[:-1] if c["choices"]]
        heads = [
            d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]
        ]
        assert [h["index"] for h in heads] == [0, 1]
        assert all(h["type"] == "function" and h["function"]["name"] for h in heads)


async def test_the_tool_round_trip_renders_the_call_and_its_result(tmp_path: Path) -> None:
    history = [
        *USER,
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
    engine = FakeEngine(pieces=pieces('{"response": "Sunny, 21C."}'))
    async with node(tmp_path, engine) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model",
            messages=history,
            tools=[WEATHER],  # type: ignore[arg-type, list-item]
        )
        assert done.choices[0].message.content == "Sunny, 21C."
        assert '"tool_response"' in n.prompt and "sunny, 21C" in n.prompt
        assert '{"tool_calls": [{"name": "get_weather"' in n.prompt


HERMES = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}{{ tool | tojson }}"
    "{% endfor %}</tools><|im_end|>\n{% endif %}{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    '{% for tc in message.tool_calls %}<tool_call>\n{"name": "{{ tc.function.name }}"}'
    "\n</tool_call>{% endfor %}<|im_end|>\n{% elif message.role == 'tool' %}<|im_start|>user\n"
    "<tool_response>{{ message.content }}</tool_response><|im_end|>\n{% else %}<|im_start|>"
    "{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


async def test_a_native_template_renders_the_tools_and_its_call_syntax_is_parsed(
    tmp_path: Path,
) -> None:
    text = (
        'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
        "</tool_call>"
    )
    engine = FakeEngine(pieces=pieces(text), metadata={"tokenizer.chat_template": HERMES})
    async with node(tmp_path, engine) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER],  # type: ignore[list-item]
        )
        message = done.choices[0].message
        assert message.content == "Let me look." and done.choices[0].finish_reason == "tool_calls"
        assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Rome"}  # type: ignore[index, union-attr]
        assert '<tools>{"type": "function"' in n.prompt
        assert n.params.grammar is None  # auto with a native syntax: the model decides
        await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            tools=[WEATHER],
            tool_choice="required",  # type: ignore[list-item]
        )
        assert n.params.grammar is not None and "<tool_call>" in n.params.grammar


# --------------------------------------------------------------------------- logprobs, n


async def test_logprobs_in_the_answer_and_in_every_chunk(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        done = await n.sdk.chat.completions.create(
            model="fake-model", messages=USER, logprobs=True, top_logprobs=2
        )
        assert n.params.logprobs == 2
        content = done.choices[0].logprobs.content or []  # type: ignore[union-attr]
        assert [t.token for t in content] == ["Hello", ",", " world", "!"]
        assert content[0].bytes == list(b"Hello") and content[1].logprob == -0.5
        assert [t.token for t in content[0].top_logprobs] == ["alt0", "alt1"]
        raw = events(await n.http.post(CHAT, json={**n.sent[-1], "stream": True}))
        chunks = [ChatCompletionChunk.model_validate(c) for c in raw[:-1]]
        texts = [c for c in chunks if c.choices and c.choices[0].delta.content]
        assert all(len(c.choices[0].logprobs.content or []) == 1 for c in texts)  # type: ignore[union-attr]
        await n.sdk.chat.completions.create(model="fake-model", messages=USER, logprobs=True)
        assert n.params.logprobs == 0
        await n.sdk.chat.completions.create(model="fake-model", messages=USER)
        assert n.params.logprobs is None


async def test_n_choices_are_forked_indexed_and_counted(tmp_path: Path) -> None:
    engine = FakeEngine(variants=[("A", "a"), ("B", "b", "b"), ("C",)])
    async with node(tmp_path, engine) as n:
        done = await n.sdk.chat.completions.create(model="fake-model", messages=USER, n=3)
        assert engine.submitted_n == [3]
        assert [(c.index, c.message.content) for c in done.choices] == [
            (0, "Aa"),
            (1, "Bbb"),
            (2, "C"),
        ]
        usage = done.usage
        assert usage is not None and usage.completion_tokens == 6
        assert usage.prompt_tokens == len(engine.submitted[-1][0])
        assert usage.total_tokens == usage.prompt_tokens + 6
        raw = events(
            await n.http.post(
                CHAT, json={**n.sent[-1], "stream": True, "stream_options": {"include_usage": True}}
            )
        )
        state = ChatCompletionStreamState()
        for chunk in raw[:-1]:
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
        final = state.get_final_completion()
        assert [c.message.content for c in final.choices] == ["Aa", "Bbb", "C"]
        finishes = [
            c["choices"][0]["index"]
            for c in raw[:-1]
            if c["choices"] and c["choices"][0]["finish_reason"]
        ]
        assert sorted(finishes) == [0, 1, 2]
        assert raw[-2]["usage"]["completion_tokens"] == 6 and raw[-1] == "[DONE]"


async def test_n_beyond_the_free_slots_is_a_503_before_any_stream(tmp_path: Path) -> None:
    async with node(tmp_path, FakeEngine(queue_size=2)) as n:
        res = await n.http.post(CHAT, json={"messages": USER, "n": 4, "stream": True})
        assert error_of(res, 503)["code"] == "queue_full"


# --------------------------------------------------------------------------- sampling fields


async def test_sampling_fields_reach_the_engine(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        await n.sdk.chat.completions.create(
            model="fake-model",
            messages=USER,
            seed=7,
            logit_bias={"42": -100, "7": 5},
            max_completion_tokens=3,
            max_tokens=9,
            stop=["\n", "END"],
            user="someone",
            metadata={"k": "v"},
            temperature=0.0,
        )
        p = n.params
        assert (p.seed, p.logit_bias, p.max_tokens, p.stop) == (
            7,
            ((7, 5.0), (42, -100.0)),
            3,
            ("\n", "END"),
        )
        assert p.temperature == 0.0


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/generate", "/generate/stream"])
async def test_a_logit_bias_outside_the_vocabulary_is_a_400(tmp_path: Path, path: str) -> None:
    body: dict[str, Any] = {"logit_bias": {"1000": -100}}
    body |= {"prompt": "Hi"} if path == "/v1/completions" else {"messages": USER}
    async with node(tmp_path) as n:
        err = error_of(await n.http.post(path, json=body))
        assert (
            err["param"] == "logit_bias"
            and "1000" in err["message"]
            and "0 to 999" in err["message"]
        )
        assert n.engine.submitted == []


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"web_search_options": {}}, "web search"),
        ({"moderation": {"model": "m"}}, "moderation"),
        ({"functions": [{"name": "f"}]}, "tools"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "auto"),
        ({"n": 9}, "8"),
        ({"logprobs": True, "top_logprobs": 21}, "20"),
        ({"top_logprobs": 2}, "logprobs"),
    ],
)
async def test_what_cannot_be_honoured_is_a_400(
    tmp_path: Path, extra: dict[str, Any], needle: str
) -> None:
    async with node(tmp_path) as n:
        err = error_of(await n.http.post(CHAT, json={"messages": USER, **extra}))
        assert needle in err["message"]


async def test_stream_options_without_stream_and_unknown_fields_are_fine(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        body = {
            "messages": USER,
            "stream_options": {"include_usage": True},
            "service_tier": "auto",
            "store": False,
            "reasoning_effort": "low",
        }
        res = await n.http.post(CHAT, json=body)
        assert res.status_code == 200
        ChatCompletion.model_validate(res.json())
