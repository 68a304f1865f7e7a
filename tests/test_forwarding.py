"""Any node is a door to the swarm: forwarding between real node processes on loopback."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.model

CHAT = [{"role": "user", "content": "Tell me a very long story about a cat."}]


def node_id(node: Any) -> str:
    return node.get("/info").json()["node_id"]


def wait_for_models(node: Any, want: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while {m["id"] for m in node.get("/v1/models").json()["data"]} < want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.url} never saw models {want}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swarm(start_node: Any) -> dict[str, Any]:
    """A serves alpha and queues nothing; B serves beta; C serves alpha; G holds no model."""
    a = start_node("--model-id", "alpha", "--parallel", "1", "--queue-size", "0")
    b = start_node("--model-id", "beta", "--bootstrap", a.bootstrap)
    c = start_node("--model-id", "alpha", "--bootstrap", a.bootstrap)
    g = start_node("--no-model", "--bootstrap", a.bootstrap)
    for node in (a, b, c, g):
        wait_for_models(node, {"alpha", "beta"})
    return {"a": a, "b": b, "c": c, "g": g}


def test_openai_sdk_at_a_streams_a_model_only_b_has(swarm: dict[str, Any]) -> None:
    a, b = swarm["a"], swarm["b"]
    sdk = openai.OpenAI(base_url=a.url + "/v1", api_key="none", max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="beta", messages=CHAT, max_tokens=16, stream=True
    )
    assert raw.headers["x-llamanet-node"] == node_id(b)
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert a.status()["requests_forwarded"] >= 1


def test_native_forwarding_names_the_serving_node(swarm: dict[str, Any]) -> None:
    a, b = swarm["a"], swarm["b"]
    res = httpx.post(
        a.url + "/generate", json={"model": "beta", "prompt": "Hi", "max_tokens": 4}, timeout=60
    )
    assert res.status_code == 200 and res.json()["node_id"] == node_id(b)


def test_models_lists_the_swarm_once_with_counts(swarm: dict[str, Any]) -> None:
    models = {m["id"]: m for m in swarm["g"].get("/v1/models").json()["data"]}
    assert set(models) == {"alpha", "beta"}
    assert models["alpha"]["nodes"] == 2 and models["beta"]["nodes"] == 1
    local = swarm["b"].get("/v1/models", params={"local": "1"}).json()["data"]
    assert [m["id"] for m in local] == ["beta"]
    assert swarm["g"].get("/v1/models", params={"local": "1"}).json()["data"] == []


def test_gateway_without_a_model_forwards(swarm: dict[str, Any]) -> None:
    g = swarm["g"]
    sdk = openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0)
    reply = sdk.chat.completions.with_raw_response.create(
        model="alpha", messages=CHAT, max_tokens=4
    )
    assert reply.headers["x-llamanet-node"] in {node_id(swarm["a"]), node_id(swarm["c"])}
    # the swarm alias and an omitted model reach some node too
    reply = sdk.chat.completions.create(model="llamanet", messages=CHAT, max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_saturated_node_forwards_instead_of_503(swarm: dict[str, Any]) -> None:
    a, c = swarm["a"], swarm["c"]
    body = {"model": "alpha", "messages": CHAT, "max_tokens": 1500, "stream": True}
    forwarded_before = a.status()["requests_forwarded"]
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", a.url + "/v1/chat/completions", json=body) as running,
    ):
        assert running.headers["x-llamanet-node"] == node_id(a)
        lines = running.iter_lines()  # held: a dropped iterator closes the connection
        next(lines)
        a.wait_until(lambda s: s["active"] == 1)  # A is full: queue size 0
        res = httpx.post(
            a.url + "/v1/chat/completions",
            timeout=60,
            json={**body, "stream": False, "max_tokens": 4},
        )
        assert res.status_code == 200
        assert res.headers["x-llamanet-node"] == node_id(c)
    assert a.status()["requests_forwarded"] == forwarded_before + 1


def test_disconnect_at_a_stops_generation_on_b(swarm: dict[str, Any]) -> None:
    a, b = swarm["a"], swarm["b"]
    b.wait_until(lambda s: s["active"] == 0)
    before = b.status()
    body = {"model": "beta", "messages": CHAT, "max_tokens": 1500, "stream": True}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", a.url + "/v1/chat/completions", json=body) as res,
    ):
        lines = res.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: {") for line in got)
    after = b.wait_until(
        lambda s: s["active"] == 0 and s["requests_cancelled"] > before["requests_cancelled"]
    )
    assert after["tokens_generated"] - before["tokens_generated"] < 1500


def test_unknown_model_is_404_listing_the_swarm(swarm: dict[str, Any]) -> None:
    res = httpx.post(
        swarm["a"].url + "/v1/chat/completions",
        timeout=30,
        json={"model": "zeta", "messages": CHAT, "max_tokens": 4},
    )
    assert res.status_code == 404
    err = res.json()["error"]
    assert err["code"] == "model_not_found"
    assert "alpha" in err["message"] and "beta" in err["message"]


def test_a_forwarded_request_is_never_forwarded_again(swarm: dict[str, Any]) -> None:
    a, b = swarm["a"], swarm["b"]
    before_a, before_b = a.status(), b.status()
    res = httpx.post(
        a.url + "/v1/chat/completions",
        timeout=30,
        headers={"X-LlamaNet-Forwarded-By": "0" * 40},
        json={"model": "beta", "messages": CHAT, "max_tokens": 4},
    )
    assert res.status_code == 404  # A lacks beta and must not pass it on
    assert a.status()["requests_forwarded"] == before_a["requests_forwarded"]
    assert b.status()["requests_total"] == before_b["requests_total"]


def test_forwarding_can_be_turned_off(start_node: Any, swarm: dict[str, Any]) -> None:
    closed = start_node("--model-id", "omega", "--no-forward", "--bootstrap", swarm["a"].bootstrap)
    res = httpx.post(
        closed.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "beta", "messages": CHAT, "max_tokens": 4},
    )
    assert res.status_code == 404
    assert closed.status()["requests_forwarded"] == 0


def test_nodes_and_one_node(swarm: dict[str, Any]) -> None:
    b_id = node_id(swarm["b"])
    nodes = swarm["a"].get("/nodes").json()["nodes"]
    assert b_id in {n["node_id"] for n in nodes}
    one = swarm["a"].get(f"/nodes/{b_id}")
    assert one.status_code == 200 and one.json()["models"][0]["id"] == "beta"
    assert swarm["a"].get("/nodes/" + "f" * 40).status_code == 404
