"""The application capabilities of issue 12 with the official `openai` SDK against a real node
(the default 135M model, one thread) and through a `--no-model` gateway in front of it.

Quality is not the point with a 135M model; structure always is: parsed objects, calls whose
arguments validate against their function's schema, logprob shapes, indexed choices, repeatable
seeds, Responses events. Schemas bound their strings and numbers so a grammar-constrained answer
ends well within its token budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

pytestmark = pytest.mark.model

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
TIME_SCHEMA = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 20}},
    "required": ["zone"],
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": TIME_SCHEMA,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]
RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0, le=100_000_000)


def wait_for_models(node: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not node.get("/v1/models").json()["data"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.url} never saw a model")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def model_node(start_node: Any) -> Any:
    return start_node("--model-id", "smol", "--n-ctx", "2048")


@pytest.fixture(scope="module")
def gateway(start_node: Any, model_node: Any) -> Any:
    g = start_node("--no-model", "--bootstrap", model_node.bootstrap)
    wait_for_models(g)
    return g


@pytest.fixture(scope="module", params=["direct", "gateway"])
def sdk(request: pytest.FixtureRequest, model_node: Any) -> Iterator[openai.OpenAI]:
    """The SDK pointed at the model's node, and at a `--no-model` gateway forwarding to it."""
    node = model_node if request.param == "direct" else request.getfixturevalue("gateway")
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0, timeout=300)
    yield client
    client.close()


def check_call(call: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """A tool call's structure: id, type, and arguments that validate against the schema."""
    assert call.id and call.type == "function"
    arguments: dict[str, Any] = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


# --------------------------------------------------------------------------- structured output


def test_parse_returns_the_pydantic_object(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.parse(
        model="smol",
        messages=[{"role": "user", "content": "Describe Paris: name, country, population."}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


def test_json_object_parses(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Give a JSON object with a key 'color'."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    choice = done.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:  # cut by the budget: the only way it may not parse
        assert choice.finish_reason == "length"


def test_a_json_schema_stream_validates(sdk: openai.OpenAI) -> None:
    schema = City.model_json_schema()
    stream = sdk.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Describe Rome."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        max_tokens=120,
        temperature=0.7,
        seed=3,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), schema)


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_forced_call_validates_against_its_schema(sdk: openai.OpenAI, choice: str) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    tool_choice: Any = "required" if choice == "required" else named
    done = sdk.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice=tool_choice,
        max_tokens=120,
        temperature=0,
    )
    choice0 = done.choices[0]
    assert choice0.finish_reason == "tool_calls" and choice0.message.content is None
    calls = choice0.message.tool_calls or []
    assert calls
    schemas: dict[str, Any] = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
    for call in calls:
        check_call(call, schemas[call.function.name])  # type: ignore[union-attr]
    if choice == "named":
        assert {c.function.name for c in calls} == {"get_weather"}  # type: ignore[union-attr]


def test_auto_is_text_or_a_valid_call(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=120,
        temperature=0,
    )
    choice = done.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        check_call(choice.message.tool_calls[0], WEATHER_SCHEMA)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content is not None


def test_a_streamed_call_accumulates_in_the_sdk_helper(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(
        model="smol",
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls or []) == 1
    check_call((choice.message.tool_calls or [])[0], WEATHER_SCHEMA)


def test_parallel_calls_each_validate(sdk: openai.OpenAI) -> None:
    """Several calls may come (a 135M model tends to repeat one until its budget ends): every
    whole call validates; only a call cut by the budget may not."""
    stream = sdk.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    arguments: dict[int, str] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            arguments[delta.index] = arguments.get(delta.index, "") + (
                delta.function.arguments or "" if delta.function else ""
            )
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert arguments and finish in ("tool_calls", "length")
    whole = list(arguments.values())[:-1] if finish == "length" else list(arguments.values())
    for text in whole:
        jsonschema.validate(json.loads(text), WEATHER_SCHEMA)


def test_the_tool_round_trip(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0,
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C every day."},
    ]
    answer = sdk.chat.completions.create(
        model="smol",
        messages=history,
        tools=[WEATHER],
        max_tokens=60,
        temperature=0,  # type: ignore[list-item]
    )
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason != "tool_calls":
        assert choice.message.content


# --------------------------------------------------------------------------- logprobs, n, seed


def test_logprobs_shapes(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        top_logprobs=3,
        max_tokens=8,
        temperature=0,
    )
    content = done.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert len(content) == done.usage.completion_tokens  # type: ignore[union-attr]
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert bytes(item.bytes or []).decode("utf-8", "replace")
        # temperature 0: the chosen token is the likeliest
        assert item.logprob >= max(t.logprob for t in item.top_logprobs) - 1e-4
    stream = sdk.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        top_logprobs=1,
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    streamed = [
        item.token
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for item in chunk.choices[0].logprobs.content or []
    ]
    assert streamed == [item.token for item in content]


def test_n_distinct_indexed_choices(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Write a one-line poem about the sea."}],
        n=3,
        max_tokens=24,
        temperature=1.0,
        seed=11,
    )
    assert [c.index for c in done.choices] == [0, 1, 2]
    texts = [c.message.content for c in done.choices]
    assert len(set(texts)) >= 2, texts
    assert done.usage is not None
    assert done.usage.completion_tokens == done.usage.total_tokens - done.usage.prompt_tokens
    assert done.usage.completion_tokens <= 3 * 24


def test_same_seed_same_text(sdk: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        done = sdk.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Tell me about cats."}],
            max_tokens=24,
            temperature=0.9,
            seed=seed,
        )
        return done.choices[0].message.content or ""

    first = ask(5)
    assert ask(5) == first
    assert first != ask(6) or first != ask(7)


# --------------------------------------------------------------------------- Responses


def test_responses_create_stream_and_previous_response_id(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(
        model="smol", input="Name a color.", instructions="Be brief.", max_output_tokens=16
    )
    assert first.output_text and first.status in ("completed", "incomplete")
    follow = sdk.responses.create(
        model="smol",
        input="And another one?",
        previous_response_id=first.id,
        max_output_tokens=16,
    )
    assert follow.previous_response_id == first.id and follow.output_text
    with sdk.responses.stream(model="smol", input="Say hi.", max_output_tokens=12) as stream:
        events = list(stream)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")  # incomplete: the budget
    assert last.response.output_text == deltas  # type: ignore[union-attr]


def test_responses_function_tools(sdk: openai.OpenAI) -> None:
    done = sdk.responses.create(
        model="smol",
        input="What is the weather in Paris for 2 days?",
        tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=120,
        temperature=0,
    )
    calls = [item for item in done.output if item.type == "function_call"]
    assert calls
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)  # type: ignore[union-attr]
    answer = sdk.responses.create(
        model="smol",
        previous_response_id=done.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,  # type: ignore[union-attr]
                "output": "Rain.",
            }
        ],
        max_output_tokens=30,
    )
    assert answer.status in ("completed", "incomplete") and answer.output
