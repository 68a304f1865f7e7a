"""Every message the node gives for an invalid request body (`errors._validation_message` and the
body-parsing errors), in process with a `FakeEngine` (fast tier): the exact text, the `param`
it names and the `code`, always a 400 in the OpenAI shape, never FastAPI's 422.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, serving
from fastapi.exceptions import RequestValidationError

from llamanet.node.config import NodeSettings
from llamanet.node.errors import _validation_message

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(NodeSettings(home=tmp_path), FakeEngine()) as client:
        yield client


async def error_of(http: httpx.AsyncClient, path: str, raw: bytes) -> dict[str, Any]:
    res = await http.post(path, content=raw, headers={"content-type": "application/json"})
    assert res.status_code == 400, res.text
    err: dict[str, Any] = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    return err


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


async def test_invalid_json(http: httpx.AsyncClient) -> None:
    for raw in (b"{not json", b'{"messages": [', b'{"max_tokens": 2,}'):
        err = await error_of(http, "/v1/chat/completions", raw)
        assert err["message"] == (
            "We could not parse the JSON body of your request: it is not valid JSON."
        )
        assert (err["param"], err["code"]) == (None, "invalid_json")


async def test_no_body(http: httpx.AsyncClient) -> None:
    err = await error_of(http, "/v1/chat/completions", b"")
    assert err["message"] == "The request has no body: send a JSON object."
    assert (err["param"], err["code"]) == (None, "invalid_json")


async def test_body_not_utf8_text(http: httpx.AsyncClient) -> None:
    for raw in (b'{"prompt": "caf\xe9"}', b'{"prompt": "ok"}\xff'):
        err = await error_of(http, "/v1/completions", raw)
        assert err["message"] == (
            "We could not read the body of your request: it is not JSON text in UTF-8."
        )
        assert (err["param"], err["code"]) == (None, "invalid_json")


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", body(max_tokens=2), "messages"),
        ("/v1/chat/completions/stream", body(), "messages"),
        ("/v1/completions", body(max_tokens=2), "prompt"),
    ],
)
async def test_missing_required_parameter(
    http: httpx.AsyncClient, path: str, raw: bytes, param: str
) -> None:
    err = await error_of(http, path, raw)
    assert err["message"] == f"Missing required parameter: '{param}'."
    assert (err["param"], err["code"]) == (param, "missing_required_parameter")


@pytest.mark.parametrize(
    ("raw", "param", "detail"),
    [
        (
            body(messages=CHAT, temperature=9),
            "temperature",
            "Input should be less than or equal to 2",
        ),
        (body(messages=CHAT, top_p=0), "top_p", "Input should be greater than 0"),
        (
            body(messages=[{"role": "wizard", "content": "x"}]),
            "messages.0.role",
            "Input should be 'system', 'developer', 'user', 'assistant' or 'tool'",
        ),
        (
            body(messages=[{"role": "user"}]),
            "messages.0",
            "Value error, a 'user' message needs content",
        ),
        (
            body(messages=CHAT, stop=["a", "b", "c", "d", "e"]),
            "stop",
            "Value error, at most 4 stop sequences are allowed",
        ),
        # a union member's tag (`int`, `str`, `list[...]`) is no field the user sent: not in param
        (
            body(messages=CHAT, max_tokens="5"),
            "max_tokens",
            "Input should be a number, not a string",
        ),
    ],
)
async def test_invalid_value_names_the_field(
    http: httpx.AsyncClient, raw: bytes, param: str, detail: str
) -> None:
    err = await error_of(http, "/v1/chat/completions", raw)
    assert err["message"] == f"Invalid value for '{param}': {detail}."
    assert (err["param"], err["code"]) == (param, "invalid_value")


async def test_more_problems_are_counted(http: httpx.AsyncClient) -> None:
    err = await error_of(http, "/v1/chat/completions", body(messages=CHAT, temperature=9, top_p=7))
    assert err["message"] == (
        "Invalid value for 'temperature': Input should be less than or equal to 2. "
        "(1 more problem(s))"
    )
    assert err["param"] == "temperature"
    # a union field fails once per member: the first member's error, the rest counted
    err = await error_of(http, "/v1/completions", body(prompt=5))
    assert (
        err["message"]
        == "Invalid value for 'prompt': Input should be a valid string. (1 more problem(s))"
    )
    assert err["param"] == "prompt"


@pytest.mark.parametrize(
    ("path", "raw", "detail"),
    [
        (
            "/v1/chat/completions",
            b"[]",
            "Input should be a valid dictionary or object to extract fields from",
        ),
        (
            "/v1/chat/completions",
            b"null",
            "Input should be a valid dictionary or object to extract fields from",
        ),
        (
            "/generate",
            body(max_tokens=2),
            "Value error, give exactly one of 'prompt' or 'messages'",
        ),
        (
            "/v1/completions",
            b'{"prompt": "hi \\ud800"}',
            "Value error, 'prompt' is not valid Unicode text (it holds a lone surrogate)",
        ),
    ],
)
async def test_invalid_body_as_a_whole(
    http: httpx.AsyncClient, path: str, raw: bytes, detail: str
) -> None:
    err = await error_of(http, path, raw)
    assert err["message"] == f"Invalid value for the request body: {detail}."
    assert (err["param"], err["code"]) == (None, "invalid_value")


def test_no_error_details_at_all() -> None:
    assert _validation_message(RequestValidationError([])) == ("Invalid request.", None, None)
