"""`POST /v1/embeddings` with the real model: the official SDK against a node, bad input, the
swarm (a `--no-model` gateway, a node started `--no-embeddings`), `LlamaNetClient.embed`, and
the embedding service's queue and shutdown in process."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from llamanet.client import LlamaNetClient
from llamanet.node.embeddings import EmbeddingService
from llamanet.node.engine import EngineClosed, QueueFull
from llamanet.node.node import GENERATION_CAPABILITIES

pytestmark = pytest.mark.model

N_CTX = 512
DIMENSIONS = 576  # SmolLM2-135M's embedding length
TEXTS = [
    "The cat sat on the mat.",
    "A kitten is sleeping on the rug.",
    "Quarterly revenue rose by eight percent.",
]


@dataclass
class Swarm:
    a: Any  # serves smol with embeddings
    b: Any  # serves smol, started --no-embeddings
    g: Any  # holds no model


def node_id(node: Any) -> str:
    node_id: str = node.get("/info").json()["node_id"]
    return node_id


def wait_for_capable_nodes(node: Any, count: int, timeout: float = 30.0) -> None:
    """Until `node` knows `count` nodes serving smol, one of them with embeddings."""
    deadline = time.monotonic() + timeout
    while True:
        cards = node.get("/v1/models").json()["data"]
        if cards and cards[0]["nodes"] == count and "embeddings" in cards[0]["capabilities"]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.url} never saw {count} smol nodes: {cards}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swarm(start_node: Any) -> Swarm:
    a = start_node("--n-ctx", str(N_CTX), "--model-id", "smol")
    b = start_node(
        "--n-ctx", str(N_CTX), "--model-id", "smol", "--no-embeddings", "--bootstrap", a.bootstrap
    )
    g = start_node("--no-model", "--bootstrap", a.bootstrap)
    for node in (b, g):
        wait_for_capable_nodes(node, 2)
    return Swarm(a, b, g)


@pytest.fixture(scope="module")
def tokenize(model_path: Path) -> Any:
    """The model's tokenizer (vocabulary only), as the node tokenizes an input string."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode(), add_bos=True, special=False)


def sdk(node: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0, timeout=120)


def vectors(response: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


# ------------------------------------------------------------------ one node, the official SDK


def test_a_string_and_a_list(swarm: Swarm, tokenize: Any) -> None:
    client = sdk(swarm.a)
    one = client.embeddings.create(model="smol", input=TEXTS[0])
    assert one.object == "list" and one.model == "smol"
    assert len(one.data) == 1 and one.data[0].object == "embedding"
    assert len(one.data[0].embedding) == DIMENSIONS
    assert one.usage.prompt_tokens == one.usage.total_tokens == len(tokenize(TEXTS[0]))
    many = client.embeddings.create(model="smol", input=TEXTS)
    assert vectors(many).shape == (3, DIMENSIONS)
    assert many.usage.prompt_tokens == sum(len(tokenize(t)) for t in TEXTS)
    assert float(vectors(many)[0] @ vectors(one)[0]) > 0.999  # see the test below


def test_vectors_are_normalised(swarm: Swarm) -> None:
    norms = np.linalg.norm(
        vectors(sdk(swarm.a).embeddings.create(model="smol", input=TEXTS)), axis=1
    )
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_float_and_base64_give_the_same_vectors(swarm: Swarm) -> None:
    client = sdk(swarm.a)
    default = client.embeddings.create(model="smol", input=TEXTS)  # the SDK asks for base64
    floats = client.embeddings.create(model="smol", input=TEXTS, encoding_format="float")
    packed = client.embeddings.create(model="smol", input=TEXTS, encoding_format="base64")
    raw = np.array(
        [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in packed.data]
    )
    assert np.array_equal(vectors(default), vectors(floats))
    assert np.array_equal(raw, vectors(floats))


def test_token_arrays_embed_like_their_text(swarm: Swarm, tokenize: Any) -> None:
    client = sdk(swarm.a)
    tokens = [tokenize(t) for t in TEXTS]
    by_text = vectors(client.embeddings.create(model="smol", input=TEXTS))
    by_tokens = vectors(client.embeddings.create(model="smol", input=tokens))
    np.testing.assert_allclose(by_tokens, by_text, atol=1e-6)
    single = client.embeddings.create(model="smol", input=tokens[1])
    assert single.usage.prompt_tokens == len(tokens[1])
    assert float(vectors(single)[0] @ by_text[1]) > 0.999


def test_similar_texts_are_closer_than_unrelated_ones(swarm: Swarm) -> None:
    cat, kitten, revenue = vectors(sdk(swarm.a).embeddings.create(model="smol", input=TEXTS))
    assert float(cat @ kitten) > float(cat @ revenue)
    assert float(cat @ kitten) > float(kitten @ revenue)


def test_a_batch_equals_its_inputs_one_by_one(swarm: Swarm) -> None:
    """Packing inputs into one decode changes nothing but rounding: llama.cpp's CPU kernels
    differ with the batch size (measured: cos 0.99946 for a short text alone or beside 60
    other tokens), so the same text agrees to cos > 0.999 across requests, not bit for bit."""
    client = sdk(swarm.a)
    long_text = " ".join(["The swarm embeds long inputs in chunks."] * 40)  # > one chunk
    batch = vectors(client.embeddings.create(model="smol", input=[*TEXTS, long_text]))
    for i, text in enumerate([*TEXTS, long_text]):
        alone = vectors(client.embeddings.create(model="smol", input=text))[0]
        assert float(alone @ batch[i]) > 0.999, i


def test_dimensions_equal_to_the_models_own_are_accepted(swarm: Swarm) -> None:
    reply = sdk(swarm.a).embeddings.create(model="smol", input="hi", dimensions=DIMENSIONS)
    assert len(reply.data[0].embedding) == DIMENSIONS


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": ""}, "invalid_value", "input"),
        ({"input": []}, "invalid_value", "input"),
        ({"input": [""]}, "invalid_value", "input"),
        ({"input": [[]]}, "invalid_value", "input"),
        ({"input": [-1]}, "invalid_value", "input"),
        ({"input": [1.5]}, "invalid_value", "input"),
        ({"input": ["a", 1]}, "invalid_value", "input"),
        ({"input": ["a"] * 2049}, "invalid_value", "input"),
        ({}, "missing_required_parameter", "input"),
        ({"input": "hi", "encoding_format": "int8"}, "invalid_value", "encoding_format"),
        ({"input": "hi", "dimensions": 256}, "unsupported_dimensions", "dimensions"),
        ({"input": [49152]}, "invalid_token", "input"),
        ({"input": ["hi", [1, 2]]}, "invalid_value", "input"),
        ({"input": "word " * (N_CTX + 50)}, "context_length_exceeded", "input"),
        ({"input": ["hi", "word " * (N_CTX + 50)]}, "context_length_exceeded", "input"),
        ({"input": list(range(N_CTX + 1))}, "context_length_exceeded", "input"),
    ],
)
def test_bad_input_is_an_openai_400(
    swarm: Swarm, body: dict[str, Any], code: str, param: str
) -> None:
    res = httpx.post(swarm.a.url + "/v1/embeddings", json=body, timeout=60)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert error["message"]


def test_after_bad_input_the_node_still_serves(swarm: Swarm) -> None:
    client = sdk(swarm.a)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="smol", input="hi", dimensions=12)
    assert "576 dimensions" in str(caught.value)
    assert len(client.embeddings.create(model="smol", input="hi").data) == 1
    assert swarm.a.get("/health").status_code == 200


def test_models_advertise_what_each_node_serves(swarm: Swarm) -> None:
    def local(node: Any) -> Any:
        return node.get("/v1/models", params={"local": "1"}).json()["data"][0]["capabilities"]

    assert local(swarm.a) == [*GENERATION_CAPABILITIES, "embeddings"]
    assert local(swarm.b) == [*GENERATION_CAPABILITIES]
    records = {r["node_id"]: r for r in swarm.g.get("/nodes").json()["nodes"]}
    assert "embeddings" in records[node_id(swarm.a)]["models"][0]["capabilities"]
    assert "embeddings" not in records[node_id(swarm.b)]["models"][0]["capabilities"]


# ------------------------------------------------------------------ the swarm


def test_a_gateway_without_a_model_forwards(swarm: Swarm) -> None:
    direct = vectors(sdk(swarm.a).embeddings.create(model="smol", input=TEXTS))
    raw = sdk(swarm.g).embeddings.with_raw_response.create(model="smol", input=TEXTS)
    assert raw.headers["x-llamanet-node"] == node_id(swarm.a)
    np.testing.assert_allclose(vectors(raw.parse()), direct, atol=1e-6)
    alias = sdk(swarm.g).embeddings.create(model="llamanet", input="hi")  # the swarm alias
    assert len(alias.data[0].embedding) == DIMENSIONS


def test_embeddings_never_go_to_a_node_without_them(swarm: Swarm) -> None:
    a = node_id(swarm.a)
    for _ in range(6):
        res = httpx.post(swarm.g.url + "/v1/embeddings", json={"input": "hi"}, timeout=60)
        assert res.status_code == 200 and res.headers["x-llamanet-node"] == a
    # the node that serves the model but not embeddings forwards them to one that does
    res = httpx.post(swarm.b.url + "/v1/embeddings", json={"input": "hi"}, timeout=60)
    assert res.status_code == 200 and res.headers["x-llamanet-node"] == a
    # while its chat stays its own
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    res = httpx.post(swarm.b.url + "/v1/chat/completions", json=chat, timeout=60)
    assert res.status_code == 200 and res.headers["x-llamanet-node"] == node_id(swarm.b)


async def test_the_client_embeds_through_the_swarm(swarm: Swarm) -> None:
    direct = vectors(sdk(swarm.a).embeddings.create(model="smol", input=TEXTS))
    async with LlamaNetClient(nodes=[swarm.g.url]) as client:
        got = await client.embed(TEXTS, model="smol")
        one = await client.embed("hi")
    np.testing.assert_allclose(np.array(got, dtype=np.float32), direct, atol=1e-6)
    assert len(one) == 1 and len(one[0]) == DIMENSIONS


def test_a_swarm_without_embeddings_refuses(start_node: Any) -> None:
    plain = start_node("--n-ctx", str(N_CTX), "--model-id", "smol", "--no-embeddings")
    gateway = start_node("--no-model", "--bootstrap", plain.bootstrap)
    deadline = time.monotonic() + 30
    while not gateway.get("/v1/models").json()["data"]:
        assert time.monotonic() < deadline, "the gateway never saw the node"
        time.sleep(0.2)
    for node in (gateway, plain):
        res = httpx.post(node.url + "/v1/embeddings", json={"input": "hi"}, timeout=60)
        assert res.status_code == 404, res.text
        error = res.json()["error"]
        assert error["code"] == "model_not_found"
        assert error["message"] == "No node in the swarm serves embeddings for any model."
    assert plain.status()["requests_forwarded"] == 0


# ------------------------------------------------------------------ the service, in process


async def test_the_queue_is_bounded_and_a_caller_may_leave(model_path: Path) -> None:
    service = EmbeddingService(model_path, n_ctx=N_CTX, n_threads=1, queue_size=0)
    try:
        await service.embed(["warm up"])  # loads the model
        long = asyncio.create_task(service.embed(["word " * 400] * 8))  # many chunks
        await asyncio.sleep(0)  # the task runs until it waits: admitted, the queue is full
        assert service.pending == 1
        with pytest.raises(QueueFull) as caught:
            await service.embed(["hi"])
        assert caught.value.retry_after >= 1
        before = service.decodes
        long.cancel()  # the caller leaves: the work stops at its next chunk
        with pytest.raises(asyncio.CancelledError):
            await long
        # the slot stays taken until the chunk running on the worker thread ends (a request
        # arriving in that moment is refused, which is right: the model is still busy)
        for _ in range(3000):
            if service.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert service.pending == 0
        # the long request needed 8 x 401 tokens / 128 per decode = 26 decodes; it stopped
        # after the one running when its caller left (two if it had just started the next)
        assert service.decodes - before <= 2
        assert (await service.embed(["hi"])).vectors.shape == (1, DIMENSIONS)
        assert service.pending == 0
    finally:
        await service.close()


async def test_close_ends_running_and_queued_work(model_path: Path) -> None:
    service = EmbeddingService(model_path, n_ctx=N_CTX, n_threads=1, queue_size=2)
    await service.embed(["warm up"])  # loads the model
    running = asyncio.create_task(service.embed(["word " * 400] * 8))
    queued = asyncio.create_task(service.embed(["hi"]))
    await asyncio.sleep(0)  # both admitted
    assert service.pending == 2
    await service.close()
    for task in (running, queued):
        with pytest.raises(EngineClosed):
            await task
    with pytest.raises(EngineClosed):
        await service.embed(["hi"])


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
async def test_no_llama_cpp_thread_team_outlives_a_request(model_path: Path) -> None:
    """After a request only the service's worker thread is left: llama.cpp's OpenMP team,
    which a thread that runs the model keeps while it lives, went with the request's passing
    thread (a team kept by the worker slowed the generation engine's every step)."""
    service = EmbeddingService(model_path, n_ctx=N_CTX, n_threads=2, queue_size=0)
    before = _threads()
    try:
        await service.embed(["the first request loads the model", "and a second input"])
        await service.embed(["a second request"])
        worker = service._worker
        assert worker is not None and worker.native_id is not None
        deadline = time.monotonic() + 10
        while (extra := _threads() - before) != {worker.native_id}:
            assert time.monotonic() < deadline, f"threads left: {len(extra)}, want the worker's"
            await asyncio.sleep(0.05)
    finally:
        await service.close()
