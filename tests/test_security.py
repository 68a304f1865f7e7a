"""API keys, private swarms and per-client limits on real node processes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from llamanet.swarm.membership import swarm_id, swarm_proof, verify_swarm_proof

CHAT = [{"role": "user", "content": "Hi"}]


def test_swarm_proof_round_trip() -> None:
    proof = swarm_proof("s3cret", "ab" * 20, now=1000.0)
    assert verify_swarm_proof("s3cret", "ab" * 20, proof, now=1000.0)
    assert not verify_swarm_proof("other", "ab" * 20, proof, now=1000.0)  # wrong secret
    assert not verify_swarm_proof("s3cret", "cd" * 20, proof, now=1000.0)  # other node
    assert not verify_swarm_proof("s3cret", "ab" * 20, proof, now=2000.0)  # too old: replay
    assert not verify_swarm_proof("s3cret", "ab" * 20, "garbage", now=1000.0)
    assert swarm_id("s3cret") != swarm_id("other") and swarm_id(None) == ""


@pytest.mark.model
def test_api_keys(start_node: Any) -> None:
    node = start_node("--model-id", "smol", "--api-key", "k1,k2")
    assert httpx.get(node.url + "/health").status_code == 200  # always public
    assert httpx.get(node.url + "/").status_code == 200  # the UI loads, then asks for a key
    for path in ("/v1/models", "/status", "/nodes", "/info", "/metrics", "/dht/status"):
        res = httpx.get(node.url + path)
        assert res.status_code == 401, path
        assert res.json()["error"]["type"] == "authentication_error"
        assert res.headers["www-authenticate"] == "Bearer"
    bad = openai.OpenAI(base_url=node.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="smol", messages=CHAT, max_tokens=2)
    for key in ("k1", "k2"):
        good = openai.OpenAI(base_url=node.url + "/v1", api_key=key, max_retries=0)
        assert good.chat.completions.create(model="smol", messages=CHAT, max_tokens=2).usage
    assert httpx.get(node.url + "/status", headers={"Authorization": "Bearer k2"}).is_success


def _wait_models(node: Any, want: set[str]) -> None:
    deadline = time.monotonic() + 30
    while {m["id"] for m in node.get("/v1/models").json()["data"]} < want:
        assert time.monotonic() < deadline, f"never saw {want}"
        time.sleep(0.2)


@pytest.mark.model
def test_private_swarm(start_node: Any) -> None:
    a = start_node("--model-id", "alpha", "--swarm-key", "club")
    b = start_node("--model-id", "beta", "--swarm-key", "club", "--bootstrap", a.bootstrap)
    outsider = start_node("--model-id", "gamma", "--bootstrap", a.bootstrap)
    _wait_models(a, {"alpha", "beta"})
    # members forward to each other
    res = httpx.post(
        a.url + "/v1/chat/completions",
        timeout=60,
        json={"model": "beta", "messages": CHAT, "max_tokens": 2},
    )
    assert res.status_code == 200
    assert res.headers["x-llamanet-node"] == b.get("/info").json()["node_id"]
    # members do not see or route to the outsider, and the outsider not to them
    assert "gamma" not in {m["id"] for m in a.get("/v1/models").json()["data"]}
    time.sleep(2)  # a few heartbeats: the outsider had every chance to learn of them
    assert {m["id"] for m in outsider.get("/v1/models").json()["data"]} == {"gamma"}
    res = httpx.post(
        outsider.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "alpha", "messages": CHAT, "max_tokens": 2},
    )
    assert res.status_code == 404
    # a forged forwarded request (no proof, or a wrong one) is refused by a member
    for proof in (None, swarm_proof("not-the-key", "ab" * 20)):
        headers = {"X-LlamaNet-Forwarded-By": "ab" * 20}
        if proof:
            headers["X-LlamaNet-Swarm-Auth"] = proof
        res = httpx.post(
            b.url + "/v1/chat/completions",
            headers=headers,
            timeout=30,
            json={"model": "beta", "messages": CHAT, "max_tokens": 2},
        )
        assert res.status_code == 403 and res.json()["error"]["code"] == "swarm_auth_failed"


@pytest.mark.model
def test_rate_limit_and_concurrency_limit(start_node: Any) -> None:
    node = start_node("--model-id", "smol", "--rate-limit", "3", "--max-streams", "1")
    body = {"model": "smol", "messages": CHAT, "max_tokens": 2}
    with httpx.Client(timeout=60) as client:
        with client.stream(
            "POST",
            node.url + "/v1/chat/completions",
            json={**body, "max_tokens": 400, "stream": True},
        ) as running:
            assert running.status_code == 200
            busy = client.post(node.url + "/v1/chat/completions", json=body)
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert int(busy.headers["retry-after"]) >= 1
        node.wait_until(lambda s: s["active"] == 0)  # the stream's slot is free again
        codes = [
            client.post(node.url + "/v1/chat/completions", json=body).status_code for _ in range(3)
        ]
    # 3 per minute: the stream used one (the request refused for concurrency none)
    assert codes == [200, 200, 429]
    assert node.get("/health").status_code == 200
