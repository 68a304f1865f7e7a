"""The bad-input catalogue, on a real node: each case gets its status and an OpenAI-shaped error,
and the node still serves correctly afterwards.

Extends tests/test_node_api.py (which covers a first set of chat bodies, 413s and the 415) to
every generation endpoint and the rest of the list: truncated JSON, wrong types, unknown models,
messages and roles, context overflow before a stream starts, budgets and sampling ranges, stop
lists, invalid UTF-8, slow-loris clients (headers or body trickled) and thousands of tiny
requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llamanet.protocol import MAX_STOP_LENGTH, MAX_TOKENS_LIMIT

pytestmark = pytest.mark.model

N_CTX = 512
BODY_TIMEOUT = 2  # `--request-timeout` of the slow-loris node: it also bounds a body's arrival
CHAT = [{"role": "user", "content": "Say hi."}]
# a valid, small body per generation endpoint
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": CHAT, "max_tokens": 2},
    "/v1/chat/completions/stream": {"messages": CHAT, "max_tokens": 2},
    "/v1/completions": {"prompt": "Hello", "max_tokens": 2},
    "/generate": {"prompt": "Hello", "max_tokens": 2},
    "/generate/stream": {"messages": CHAT, "max_tokens": 2},
}
ENDPOINTS = list(VALID)
STREAMING = {"/v1/chat/completions/stream", "/generate/stream"}


@pytest.fixture(scope="module")
def node(start_node: Any) -> Any:
    return start_node("--model-id", "smol", "--n-ctx", str(N_CTX))


@pytest.fixture(scope="module")
def client(node: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.url, timeout=30) as c:
        yield c


def assert_error(
    res: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The status, and the OpenAI error shape: exactly message, type, param, code."""
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json")
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def assert_serves(client: httpx.Client, path: str = "/v1/chat/completions") -> None:
    """The node still answers a real request correctly, and holds no work."""
    res = client.post(path, json=VALID[path])
    assert res.status_code == 200, res.text
    if path in STREAMING or path.endswith("stream"):
        assert res.text.rstrip().endswith("data: [DONE]")
    else:
        body = res.json()
        reason = body.get("finish_reason") or body["choices"][0]["finish_reason"]
        assert reason in ("stop", "length")
    status = client.get("/status").json()
    assert status["active"] == 0 and status["queued"] == 0


def post_raw(
    client: httpx.Client, path: str, raw: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return client.post(path, content=raw, headers=headers)


# ------------------------------------------------------------------ malformed and truncated JSON


def _truncations(body: dict[str, Any]) -> list[bytes]:
    raw = json.dumps(body).encode()
    return [raw[: len(raw) * k // 4] for k in (1, 2, 3)] + [raw[:-1]]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_malformed_and_truncated_json_is_400(client: httpx.Client, path: str) -> None:
    bad = [
        b"{not json",
        b"{}}",
        b'{"max_tokens": 2,}',
        b"{'prompt': 'single quotes'}",
        b"\x00\x01\x02",
        *_truncations(VALID[path]),
    ]
    for raw in bad:
        assert_error(post_raw(client, path, raw), 400, "invalid_json")
    assert_error(post_raw(client, path, b""), 400, "invalid_json")  # no body at all
    for raw in (b"null", b"[]", b'"a string"', b"42"):  # JSON, but not an object
        assert_error(post_raw(client, path, raw), 400, "invalid_value")
    assert_serves(client, path)


# ------------------------------------------------------------------ content type


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/xml",
    ],
)
def test_wrong_content_type_is_415(client: httpx.Client, ctype: str) -> None:
    for path in ENDPOINTS:
        res = post_raw(client, path, json.dumps(VALID[path]).encode(), ctype)
        assert_error(res, 415, "unsupported_media_type")
    assert_serves(client)


def test_json_content_type_variants_are_accepted(client: httpx.Client) -> None:
    raw = json.dumps(VALID["/v1/completions"]).encode()
    for ctype in ("application/json; charset=utf-8", "Application/JSON", None):
        res = post_raw(client, "/v1/completions", raw, ctype)
        assert res.status_code == 200, (ctype, res.text)
        assert res.json()["choices"][0]["finish_reason"] in ("stop", "length")


# ------------------------------------------------------------------ wrong types, missing and extra


WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": "5"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": True}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2.5}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "0.5"}, "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": 1}, "stream"),
    (
        "/v1/chat/completions",
        {"messages": CHAT, "stream_options": {"include_usage": "no"}},
        "stream_options.include_usage",
    ),
    ("/v1/chat/completions", {"messages": CHAT, "seed": "42"}, "seed"),
    ("/v1/chat/completions", {"messages": CHAT, "model": 7}, "model"),
    ("/v1/chat/completions", {"messages": {"role": "user", "content": "hi"}}, "messages"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"prompt": "a", "echo": "true"}, "echo"),
    ("/v1/completions", {"prompt": "a", "top_k": "40"}, "top_k"),
    ("/generate", {"prompt": ["a"]}, "prompt"),
    ("/generate", {"prompt": "a", "stop": 5}, "stop"),
    ("/generate/stream", {"prompt": {"text": "a"}}, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "param"), WRONG_TYPES)
def test_wrong_types_are_400(
    client: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    assert_error(client.post(path, json=body), 400, "invalid_value", param)
    assert_serves(client, path)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"max_tokens": 2}, "messages"),
        ("/v1/chat/completions/stream", {}, "messages"),
        ("/v1/completions", {"max_tokens": 2}, "prompt"),
    ],
)
def test_missing_required_field_is_400(
    client: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    assert_error(client.post(path, json=body), 400, "missing_required_parameter", param)
    assert_serves(client, path)


@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
def test_native_needs_exactly_one_of_prompt_or_messages(client: httpx.Client, path: str) -> None:
    assert_error(client.post(path, json={"max_tokens": 2}), 400, "invalid_value")
    assert_error(client.post(path, json={"prompt": "a", "messages": CHAT}), 400, "invalid_value")
    assert_serves(client, path)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_extra_fields_are_ignored(client: httpx.Client, path: str) -> None:
    """Like OpenAI's newer SDKs sending fields this node does not know: served, not refused."""
    body = {
        **VALID[path],
        "logit_bias": {"42": -100},
        "x_unknown": [1, {"a": None}],
        "response_format": {"type": "text"},
    }
    res = client.post(path, json=body)
    assert res.status_code == 200, res.text
    assert_serves(client, path)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_logit_bias_outside_the_vocabulary_is_400(client: httpx.Client, path: str) -> None:
    """50256 is GPT-2's end of text, beyond the default model's 49152 tokens: a bias the engine
    cannot apply is refused, not ignored."""
    body = {**VALID[path], "logit_bias": {"50256": -100}}
    err = assert_error(client.post(path, json=body), 400, "invalid_token", "logit_bias")
    assert "50256" in err["message"] and "49151" in err["message"]
    assert_serves(client, path)


# ------------------------------------------------------------------ unknown model


@pytest.mark.parametrize("path", ENDPOINTS)
def test_unknown_model_is_404_before_any_stream(client: httpx.Client, path: str) -> None:
    for model in ("gpt-17", "", " smol", "x" * 300, "../../etc/passwd"):
        if model == "":
            continue  # "" means any model, like an absent one
        err = assert_error(
            client.post(path, json={**VALID[path], "model": model}), 404, "model_not_found", "model"
        )
        assert "smol" in err["message"]  # it names what is served
    res = client.post(path, json={**VALID[path], "model": ""})
    assert res.status_code == 200
    assert_serves(client, path)


# ------------------------------------------------------------------ messages and roles


BAD_MESSAGES: list[Any] = [
    [],
    [{}],
    [None],
    ["hi"],
    [{"content": "no role"}],
    [{"role": "wizard", "content": "x"}],
    [{"role": "USER", "content": "x"}],
    [{"role": "user"}],
    [{"role": "system", "content": None}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"text": "no type"}]}],
    [{"role": "user", "content": "ok"}, {"role": "tool"}],
]


@pytest.mark.parametrize("messages", BAD_MESSAGES, ids=[json.dumps(m)[:40] for m in BAD_MESSAGES])
def test_empty_or_invalid_messages_are_400(client: httpx.Client, messages: Any) -> None:
    for path in ("/v1/chat/completions", "/v1/chat/completions/stream", "/generate/stream"):
        err = assert_error(client.post(path, json={"messages": messages, "max_tokens": 2}), 400)
        assert err["code"] in ("invalid_value", "missing_required_parameter")
        assert err["param"] is None or err["param"].startswith("messages")
    assert_serves(client)


def test_unusual_but_valid_messages_are_served(client: httpx.Client) -> None:
    for messages in (
        [{"role": "assistant"}],  # an assistant turn may lack content
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": ""}],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}],
            }
        ],
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": "\u0000 and \u2028"},
        ],
    ):
        res = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
        assert res.status_code == 200, (messages, res.text)


def test_a_tool_message_must_answer_an_earlier_call(client: httpx.Client) -> None:
    """A tool result without its call's id, or for a call no assistant message made: 400s."""
    for messages, code in (
        ([{"role": "tool", "content": "42"}], "invalid_value"),
        ([{"role": "tool", "tool_call_id": "c9", "content": "42"}], "unknown_tool_call"),
    ):
        res = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
        assert_error(res, 400, code)
    assert_serves(client)


# ------------------------------------------------------------------ context, budgets, sampling


@pytest.mark.parametrize("path", ENDPOINTS)
def test_prompt_beyond_n_ctx_is_400_before_any_stream(client: httpx.Client, path: str) -> None:
    long = "word " * (N_CTX + 50)
    body = dict(VALID[path])
    if "messages" in body:
        body["messages"] = [{"role": "user", "content": long}]
    else:
        body["prompt"] = long
    assert_error(client.post(path, json=body), 400, "context_length_exceeded")
    # a prompt that fits with a budget that does not
    assert_error(
        client.post(path, json={**VALID[path], "max_tokens": N_CTX}), 400, "context_length_exceeded"
    )
    assert_serves(client, path)


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("max_tokens", 0, "invalid_value"),
        ("max_tokens", -1, "invalid_value"),
        ("max_tokens", MAX_TOKENS_LIMIT + 1, "invalid_value"),
        ("max_tokens", 2**63, "invalid_value"),
        ("max_tokens", 10**6, "context_length_exceeded"),  # well-formed, but beyond the context
        ("max_completion_tokens", 0, "invalid_value"),
        ("temperature", -0.1, "invalid_value"),
        ("temperature", 2.01, "invalid_value"),
        ("top_p", 0, "invalid_value"),
        ("top_p", 1.01, "invalid_value"),
        ("top_k", -1, "invalid_value"),
        ("top_k", 1001, "invalid_value"),
        ("min_p", 1.5, "invalid_value"),
        ("repeat_penalty", 0, "invalid_value"),
        ("presence_penalty", 2.5, "invalid_value"),
        ("frequency_penalty", -3, "invalid_value"),
        ("n", 0, "invalid_value"),
        ("n", 9, "invalid_value"),  # above protocol.MAX_N
    ],
)
def test_budgets_and_sampling_out_of_range_are_400(
    client: httpx.Client, field: str, value: Any, code: str
) -> None:
    res = client.post("/v1/chat/completions", json={**VALID["/v1/chat/completions"], field: value})
    assert_error(res, 400, code, field if code == "invalid_value" else None)
    assert_serves(client)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_400(client: httpx.Client, literal: bytes) -> None:
    for field in (b"temperature", b"top_p", b"presence_penalty"):
        raw = b'{"prompt": "Hi", "max_tokens": 2, "' + field + b'": ' + literal + b"}"
        assert_error(post_raw(client, "/v1/completions", raw), 400, "invalid_value", field.decode())
    assert_serves(client, "/v1/completions")


@pytest.mark.parametrize(
    "stop",
    [
        ["a", "b", "c", "d", "e"],
        ["x" * (MAX_STOP_LENGTH + 1)],
        "",
        [""],
        ["ok", None],
        {"s": 1},
    ],
)
def test_bad_stop_sequences_are_400(client: httpx.Client, stop: Any) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/generate"):
        assert_error(
            client.post(path, json={**VALID[path], "stop": stop}), 400, "invalid_value", "stop"
        )
    assert_serves(client)


def test_longest_allowed_stop_list_is_served(client: httpx.Client) -> None:
    stop = ["\n\n\n", "x" * MAX_STOP_LENGTH, "END", "\u2603"]
    res = client.post("/v1/completions", json={**VALID["/v1/completions"], "stop": stop})
    assert res.status_code == 200, res.text


# ------------------------------------------------------------------ invalid UTF-8


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "caf\xe9", "max_tokens": 2}',  # Latin-1, not UTF-8
        b'{"prompt": "\xc0\xaf", "max_tokens": 2}',  # an overlong encoding
        b'{"prompt": "\xed\xa0\x80", "max_tokens": 2}',  # a UTF-8-encoded surrogate
        b'{"prompt": "ok", "max_tokens": 2}\xff',
        b'\xef\xbb\xbf\xff{"prompt": "ok"}',
    ],
)
def test_invalid_utf8_bytes_are_400(client: httpx.Client, raw: bytes) -> None:
    for path in ("/v1/completions", "/generate", "/generate/stream"):
        err = assert_error(post_raw(client, path, raw), 400)
        # undecodable bytes; or (Python's decoder lets an encoded surrogate through) refused text
        assert err["code"] in ("invalid_json", "invalid_value"), err
    assert_serves(client, "/v1/completions")


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/completions", b'{"prompt": "hi \\ud800", "max_tokens": 2}'),
        ("/v1/completions", b'{"prompt": ["\\udfff"], "max_tokens": 2}'),
        ("/v1/completions", b'{"prompt": "hi", "model": "\\ud83d", "max_tokens": 2}'),
        ("/v1/completions", b'{"prompt": "hi", "stop": ["\\udc00"], "max_tokens": 2}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udbff"}]}]}',
        ),
        (
            "/v1/chat/completions/stream",
            b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        ),
        ("/generate", b'{"prompt": "\\udc00\\ud800", "max_tokens": 2}'),
        (
            "/generate/stream",
            b'{"messages": [{"role": "user", "content": "x", "name": "\\ud800"}]}',
        ),
    ],
)
def test_lone_surrogate_escapes_are_400_not_500(
    client: httpx.Client, path: str, raw: bytes
) -> None:
    """Valid JSON, but no UTF-8 text can hold a lone surrogate: refused before the tokenizer."""
    err = assert_error(post_raw(client, path, raw), 400, "invalid_value")
    assert "Unicode" in err["message"]
    assert_serves(client, path)


def test_a_proper_surrogate_pair_is_fine(client: httpx.Client) -> None:
    raw = b'{"prompt": "emoji \\ud83d\\ude00", "max_tokens": 2}'
    assert post_raw(client, "/v1/completions", raw).status_code == 200


# ------------------------------------------------------------------ size limit (other endpoints)


@pytest.mark.parametrize(
    "path", ["/v1/completions", "/generate", "/generate/stream", "/v1/chat/completions/stream"]
)
def test_body_over_the_limit_is_413_on_every_endpoint(client: httpx.Client, path: str) -> None:
    many = {"messages": [{"role": "user", "content": "x" * 1000}] * 1100, "prompt": "p"}
    res = post_raw(client, path, json.dumps(many).encode())
    assert_error(res, 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    assert_error(
        client.post(path, content=chunks(), headers={"content-type": "application/json"}), 413
    )
    assert_serves(client, path)


# ------------------------------------------------------------------ slow loris


def _connect(node: Any) -> socket.socket:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """Everything the node sends until it closes the connection (bounded by the timeout)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_trickled_headers_do_not_block_others(node: Any, client: httpx.Client) -> None:
    """Clients sending their headers a few bytes at a time hold only a socket each: the node
    serves everyone else meanwhile, and no engine slot is taken."""
    slow = [_connect(node) for _ in range(16)]
    try:
        for sock in slow:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for round_ in range(3):  # the slow clients trickle; everyone else is served
            for sock in slow:
                sock.sendall(f"X-Slow-{round_}: {'a' * 8}\r\n".encode())
            assert_serves(client)
            assert client.get("/health").status_code == 200
        status = client.get("/status").json()
        assert status["active"] == 0 and status["queued"] == 0
    finally:
        for sock in slow:
            sock.close()
    assert_serves(client)


def test_an_endless_header_section_is_refused(node: Any, client: httpx.Client) -> None:
    sock = _connect(node)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(17):  # just past 16 KiB, then stop (so that no RST eats the answer)
            sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        sock.settimeout(3)
        reply = _read_response(sock)
    finally:
        sock.close()
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), reply[:200]
    assert_serves(client)


def test_trickled_body_is_cut_off_with_408_while_others_are_served(start_node: Any) -> None:
    """A body trickled for longer than the node's request timeout gets an OpenAI-shaped 408 and
    its connection is closed; it never takes an engine slot, and other clients are served."""
    node = start_node("--model-id", "smol", "--request-timeout", str(BODY_TIMEOUT))
    client = httpx.Client(base_url=node.url, timeout=30)
    body = json.dumps(VALID["/v1/chat/completions"]).encode()
    socks = [_connect(node) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
        replies: dict[int, bytes] = {}
        deadline = time.monotonic() + 10 * BODY_TIMEOUT  # a generous bound, not a measurement
        position = 0
        while len(replies) < len(socks) and time.monotonic() < deadline:
            for index, sock in enumerate(socks):
                if index in replies:
                    continue
                try:
                    sock.sendall(body[position % (len(body) - 1) : position % (len(body) - 1) + 1])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                sock.setblocking(False)
                try:
                    chunk = sock.recv(65536)
                    if chunk:
                        replies[index] = chunk
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            position += 1
            status = client.get("/status").json()
            assert status["active"] == 0 and status["queued"] == 0  # no engine slot held
            time.sleep(0.25)
        assert len(replies) == len(socks), "a trickling client was never cut off"
        for index, sock in enumerate(socks):
            sock.settimeout(10)
            reply = replies[index] + _read_response(sock)  # then the node closes it
            head, _, payload = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), head
            assert b"connection: close" in head.lower()
            assert json.loads(payload)["error"]["code"] == "timeout"
    finally:
        for sock in socks:
            sock.close()
    assert client.get("/health").status_code == 200
    client.close()


def test_a_slow_but_complete_body_within_the_timeout_is_served(node: Any) -> None:
    body = json.dumps(VALID["/v1/completions"]).encode()
    sock = _connect(node)
    try:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        for piece in (body[:10], body[10:20], body[20:]):
            sock.sendall(piece)
            time.sleep(0.1)
        reply = _read_response(sock)
    finally:
        sock.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload)["choices"][0]["finish_reason"] in ("stop", "length")


# ------------------------------------------------------------------ thousands of tiny requests


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_thousands_of_tiny_requests(node: Any, client: httpx.Client) -> None:
    """2000 small requests (health, status, models, bad JSON, unknown model, wrong method) with
    32 in flight: each gets its expected status, none a 5xx, and afterwards the node is healthy,
    idle and holds no more file descriptors than before (connections were not leaked)."""
    fds_before = _open_fds(node.proc.pid)
    kinds: list[tuple[str, str, bytes | None, int]] = [
        ("GET", "/health", None, 200),
        ("GET", "/status", None, 200),
        ("GET", "/v1/models", None, 200),
        ("POST", "/v1/chat/completions", b"{bad", 400),
        ("POST", "/v1/completions", b'{"prompt": "x", "model": "nope"}', 404),
        ("GET", "/generate", None, 405),
        ("GET", "/v1/nothing", None, 404),
        ("POST", "/generate", b'{"prompt": "", "max_tokens": 1}', 400),
    ]
    total = 2000

    async def run() -> Counter[tuple[str, int, int]]:
        outcomes: Counter[tuple[str, int, int]] = Counter()
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=8)
        async with httpx.AsyncClient(base_url=node.url, timeout=30, limits=limits) as http:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(total):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    method, path, raw, want = kinds[queue.get_nowait() % len(kinds)]
                    res = await http.request(
                        method,
                        path,
                        content=raw,
                        headers={"content-type": "application/json"} if raw is not None else None,
                    )
                    if res.status_code >= 400:
                        assert set(res.json()["error"]) == {"message", "type", "param", "code"}
                    outcomes[(path, want, res.status_code)] += 1

            await asyncio.gather(*(worker() for _ in range(32)))
        return outcomes

    outcomes = asyncio.run(run())
    assert sum(outcomes.values()) == total
    wrong = {k: n for k, n in outcomes.items() if k[1] != k[2]}
    assert not wrong, wrong
    assert client.get("/health").status_code == 200
    assert_serves(client)
    # the connections are gone again (a few may linger in keep-alive for up to 5 s)
    deadline = time.monotonic() + 30
    while _open_fds(node.proc.pid) > fds_before + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _open_fds(node.proc.pid) <= fds_before + 4
