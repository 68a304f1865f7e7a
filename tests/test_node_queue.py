"""Queueing, disconnects and mid-stream failures on a real node (real model, real HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.model

LONG = {
    "messages": [{"role": "user", "content": "Tell me a very long story."}],
    "max_tokens": 1500,
    "temperature": 0.8,
    "stream": True,
}


@pytest.fixture(scope="module")
def node(start_node: Any) -> Any:
    return start_node("--parallel", "1", "--queue-size", "1", "--model-id", "smol")


@contextlib.contextmanager
def open_stream(node: Any, body: dict[str, Any]) -> Iterator[Iterator[str]]:
    """A streaming request held open until the block ends (then the client disconnects)."""
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", node.url + "/v1/chat/completions", json=body) as res,
    ):
        assert res.status_code == 200, res.read()
        yield res.iter_lines()


def idle(status: dict[str, Any]) -> bool:
    return status["active"] == 0 and status["queued"] == 0


def test_full_queue_is_503_with_retry_after(node: Any) -> None:
    with open_stream(node, LONG) as first:
        next(first)
        node.wait_until(lambda s: s["active"] == 1)
        with open_stream(node, LONG):
            node.wait_until(lambda s: s["queued"] == 1)
            res = httpx.post(node.url + "/v1/chat/completions", json=LONG, timeout=30)
            assert res.status_code == 503
            assert int(res.headers["retry-after"]) >= 1
            assert res.json()["error"]["code"] == "queue_full"
    status = node.wait_until(idle)
    assert status["requests_rejected"] >= 1


def test_disconnect_mid_stream_frees_the_node(node: Any) -> None:
    node.wait_until(idle)
    before = node.status()
    with open_stream(node, LONG) as lines:
        received = [next(lines) for _ in range(6)]  # a few events, then the client leaves
    assert any(line.startswith("data: {") for line in received)
    # the client is gone: the node must stop that generation, not run it to 1500 tokens
    after = node.wait_until(
        lambda s: idle(s) and s["requests_cancelled"] > before["requests_cancelled"]
    )
    assert after["tokens_generated"] - before["tokens_generated"] < 1500
    reply = httpx.post(
        node.url + "/v1/chat/completions",
        timeout=60,
        json={**LONG, "stream": False, "max_tokens": 8},
    ).json()
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")


def test_disconnect_while_queued_releases_the_slot(node: Any) -> None:
    node.wait_until(idle)
    before = node.status()
    with open_stream(node, LONG) as first:
        next(first)
        node.wait_until(lambda s: s["active"] == 1)
        with open_stream(node, LONG):
            node.wait_until(lambda s: s["queued"] == 1)
        node.wait_until(lambda s: s["queued"] == 0)  # the queued request left: slot freed
        with open_stream(node, {**LONG, "max_tokens": 4}):  # admitted (200), not 503
            node.wait_until(lambda s: s["queued"] == 1)
    after = node.wait_until(idle)
    assert after["requests_cancelled"] - before["requests_cancelled"] >= 2
    assert after["requests_rejected"] == before["requests_rejected"]


def test_disconnect_during_non_streaming_request_cancels_it(node: Any) -> None:
    node.wait_until(idle)
    before = node.status()
    # counting at temperature 0 never meets an end-of-sequence: it would run to 1500 tokens
    body = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 1500, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(node.url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    after = node.wait_until(
        lambda s: idle(s) and s["requests_cancelled"] > before["requests_cancelled"]
    )
    assert after["tokens_generated"] - before["tokens_generated"] < 1500


def test_mid_stream_failure_is_an_error_event_not_a_truncation(start_node: Any) -> None:
    """A stream that outlives the node's request timeout ends with an error the SDK raises."""
    slow = start_node("--request-timeout", "0.5", "--model-id", "smol")
    sdk = openai.OpenAI(base_url=slow.url + "/v1", api_key="none", max_retries=0)
    stream = sdk.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Count from 1 to 1000: 1, 2, 3,"}],
        max_tokens=1500,
        temperature=0,
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert received  # it failed after it started: mid-stream
    assert "timeout" in str(err.value).lower()
    slow.wait_until(idle)
