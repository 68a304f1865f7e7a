"""Embeddings without the model (fast tier): the packing plan, the input checks, the encodings,
the request model, capabilities in records and in the selector, and the route in process.

The route tests run the real app with a `FakeEngine` and `FakeEmbeddings`, a stand-in for the
embedding service named as such (deterministic vectors, no model); the real service is tested
against the real model in `tests/test_embeddings.py`.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fakes import FakeEngine

from llamanet.node.app import create_app
from llamanet.node.config import NodeSettings
from llamanet.node.embeddings import (
    EmbeddingInputError,
    Embeddings,
    EmbeddingService,
    check_dimensions,
    check_inputs,
    encode_vector,
    normalize,
    plan_batches,
)
from llamanet.node.engine import QueueFull
from llamanet.node.node import GENERATION_CAPABILITIES, LlamaNetNode
from llamanet.node.routes.embeddings import render
from llamanet.protocol import MAX_EMBEDDING_INPUTS, EmbeddingRequest, ModelInfo, NodeRecord
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import decode_record, encode_record, sign_record, verify_record
from llamanet.swarm.selector import NodeSelector, offers

# ------------------------------------------------------------------ the packing plan


def test_short_inputs_share_a_decode() -> None:
    plan = plan_batches([3, 4, 5], batch_tokens=16)
    assert [[(s.index, s.start, s.length, s.last) for s in b] for b in plan] == [
        [(0, 0, 3, True), (1, 0, 4, True), (2, 0, 5, True)]
    ]


def test_a_long_input_continues_in_the_next_decode() -> None:
    plan = plan_batches([5, 20, 2], batch_tokens=8)
    flat = [[(s.index, s.start, s.length, s.last) for s in b] for b in plan]
    assert flat == [
        [(0, 0, 5, True), (1, 0, 3, False)],
        [(1, 3, 8, False)],
        [(1, 11, 8, False)],
        [(1, 19, 1, True), (2, 0, 2, True)],
    ]


def test_a_decode_holds_at_most_max_sequences_inputs() -> None:
    plan = plan_batches([1] * 10, batch_tokens=100, max_sequences=4)
    assert [len(b) for b in plan] == [4, 4, 2]


@pytest.mark.parametrize("seed", range(20))
def test_plan_covers_every_token_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
    batch, seqs = rng.randint(1, 64), rng.randint(1, 16)
    plan = plan_batches(lengths, batch, seqs)
    covered: dict[int, list[tuple[int, int]]] = {}
    for segments in plan:
        assert 0 < sum(s.length for s in segments) <= batch and len(segments) <= seqs
        indices = [s.index for s in segments]
        assert indices == list(range(indices[0], indices[0] + len(indices)))  # consecutive
        assert len({i % seqs for i in indices}) == len(indices)  # distinct sequence ids
        open_inputs = [s for s in segments if not s.last]
        assert len(open_inputs) <= 1 and (not open_inputs or open_inputs[0] is segments[-1])
        for s in segments:
            covered.setdefault(s.index, []).append((s.start, s.length))
    for index, length in enumerate(lengths):
        spans = covered[index]
        assert spans[0][0] == 0 and sum(n for _, n in spans) == length
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))


def test_plan_refuses_a_zero_budget() -> None:
    with pytest.raises(ValueError):
        plan_batches([1], batch_tokens=0)


# ------------------------------------------------------------------ input checks


def test_check_inputs_counts_tokens() -> None:
    assert check_inputs([[1, 2], [3]], n_ctx=4, n_vocab=10, max_total=100) == 3


@pytest.mark.parametrize(
    ("tokens", "code", "words"),
    [
        ([[1, 2, 3, 4, 5]], "context_length_exceeded", ["5 tokens", "at most 4"]),
        ([[1], [1, 2, 3, 4, 5]], "context_length_exceeded", ["'input[1]'"]),
        ([[1, 10]], "invalid_token", ["token id 10", "0 to 9"]),
        ([[]], "empty_input", ["no tokens"]),
        ([[1, 2, 3]] * 4, "too_many_tokens", ["12 tokens", "at most 10"]),
    ],
)
def test_check_inputs_refuses(tokens: list[list[int]], code: str, words: list[str]) -> None:
    with pytest.raises(EmbeddingInputError) as caught:
        check_inputs(tokens, n_ctx=4, n_vocab=10, max_total=10)
    assert caught.value.code == code and caught.value.param == "input"
    assert all(w in caught.value.message for w in words), caught.value.message


def test_dimensions_only_as_the_models_own() -> None:
    check_dimensions(None, 576)
    check_dimensions(576, 576)
    with pytest.raises(EmbeddingInputError) as caught:
        check_dimensions(256, 576)
    assert caught.value.param == "dimensions" and caught.value.code == "unsupported_dimensions"
    assert "576 dimensions" in caught.value.message and "not supported" in caught.value.message


# ------------------------------------------------------------------ vectors and encodings


def test_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    out = normalize(np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]))
    assert out.dtype == np.float32
    assert out.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, 0.0], [-1.0, 0.0]]


def test_base64_is_little_endian_float32_of_the_same_values() -> None:
    vector = normalize(np.random.default_rng(1).normal(size=(1, 64)))[0]
    floats = encode_vector(vector, "float")
    packed = encode_vector(vector, "base64")
    assert isinstance(floats, list) and isinstance(packed, str)
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    assert decoded.tolist() == floats == vector.tolist()


def test_render_is_openais_shape() -> None:
    result = Embeddings(normalize(np.eye(2, 3)), prompt_tokens=7)
    body = json.loads(render(result, "float", "m"))
    assert body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0, 0.0]},
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0, 0.0]},
        ],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


# ------------------------------------------------------------------ the request model


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
        (list(range(5000)), [list(range(5000))]),  # one long token array is one input
    ],
)
def test_request_inputs(value: Any, inputs: list[Any]) -> None:
    assert EmbeddingRequest(input=value).inputs() == inputs


@pytest.mark.parametrize(
    "value",
    [
        "",
        [],
        [""],
        ["a", ""],
        [[]],
        [[1], []],
        [-1],
        [1.5],
        [True],
        ["a", 1],
        [[1], "a"],
        [2**31],
        {"text": "a"},
        None,
        ["a"] * (MAX_EMBEDDING_INPUTS + 1),
    ],
)
def test_request_refuses_bad_input(value: Any) -> None:
    with pytest.raises(ValueError):
        EmbeddingRequest(input=value)


def test_request_schema_documents_the_limits() -> None:
    schema = EmbeddingRequest.model_json_schema()["properties"]["input"]
    string, strings, tokens, arrays = schema["anyOf"]
    assert string["minLength"] == 1 and strings["items"]["minLength"] == 1
    assert strings["minItems"] == tokens["minItems"] == arrays["minItems"] == 1
    assert strings["maxItems"] == arrays["maxItems"] == MAX_EMBEDDING_INPUTS
    assert tokens["items"]["minimum"] == 0


# ------------------------------------------------------------------ records and the selector


def record(identity: NodeIdentity, capabilities: list[str], model: str = "m") -> NodeRecord:
    info = ModelInfo(id=model, n_ctx=512, quantization="Q4_1", capabilities=capabilities)
    return sign_record(
        identity, url="http://127.0.0.1:1", models=[info], version="0", started_at=0.0, ttl=30.0
    )


def test_capabilities_travel_in_the_signed_record(tmp_path: Path) -> None:
    identity = NodeIdentity.load_or_create(tmp_path)
    signed = record(identity, ["chat", "completions", "embeddings"])
    wire = encode_record(signed)
    back = verify_record(wire)
    assert back.models[0].capabilities == ["chat", "completions", "embeddings"]
    assert len(wire) < 300  # the record stays small
    bare = verify_record(encode_record(record(identity, [])))  # the older, 3-field model entry
    assert bare.models[0].capabilities == []
    assert decode_record(encode_record(bare)) == bare


def test_selector_routes_a_capability_only_to_nodes_that_advertise_it(tmp_path: Path) -> None:
    chat_only = record(NodeIdentity.load_or_create(tmp_path / "a"), ["chat", "completions"])
    both = record(NodeIdentity.load_or_create(tmp_path / "b"), ["chat", "embeddings"])
    other = record(NodeIdentity.load_or_create(tmp_path / "c"), ["embeddings"], model="n")
    selector = NodeSelector()
    nodes = [chat_only, both, other]
    for _ in range(20):
        assert selector.rank(nodes, model="m", capability="embeddings") == [both]
    assert {r.node_id for r in selector.rank(nodes, capability="embeddings")} == {
        both.node_id,
        other.node_id,
    }
    assert selector.rank([chat_only], capability="embeddings") == []
    assert selector.select([chat_only], model="m", capability="embeddings") is None
    assert len(selector.rank(nodes, model="m")) == 2  # no capability asked: both serve m
    assert offers(both, "m", "embeddings") and not offers(both, "n", "embeddings")
    assert offers(chat_only, "m", None)


# ------------------------------------------------------------------ the route, in process


class FakeEmbeddings(EmbeddingService):
    """A stand-in for the embedding service in fast tests only: no model, no thread. Each
    input's vector is one-hot at (its token count or length) modulo `width`; `error` is raised
    instead when set."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(Path("/models/fake.gguf"), n_ctx=64)
        self.width = width
        self.dimensions = width
        self.error: Exception | None = None
        self.calls: list[tuple[list[Any], int | None]] = []

    async def embed(
        self, inputs: list[str] | list[list[int]], *, dimensions: int | None = None
    ) -> Embeddings:
        self.calls.append((list(inputs), dimensions))
        if self.error is not None:
            raise self.error
        vectors = np.zeros((len(inputs), self.width), dtype=np.float32)
        for i, item in enumerate(inputs):
            vectors[i, len(item) % self.width] = 1.0
        return Embeddings(vectors, prompt_tokens=sum(len(item) for item in inputs))

    async def close(self) -> None:
        pass


@asynccontextmanager
async def node_app(
    tmp_path: Path, embeddings: EmbeddingService | None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    node = LlamaNetNode(
        NodeSettings(home=tmp_path, **settings),
        engine=FakeEngine(),
        dht=False,
        embeddings=embeddings,
    )
    app = create_app(node)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as http:
            yield http


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with node_app(tmp_path, FakeEmbeddings()) as client:
        yield client


def sdk(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://node.test/v1", api_key="none", http_client=http, max_retries=0
    )


async def test_the_sdk_reads_both_encodings(http: httpx.AsyncClient) -> None:
    client = sdk(http)
    default = await client.embeddings.create(model="fake-model", input=["a", "abc"])  # base64
    floats = await client.embeddings.create(
        model="llamanet", input=["a", "abc"], encoding_format="float"
    )
    packed = await client.embeddings.create(
        model="fake-model", input=["a", "abc"], encoding_format="base64"
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert default.data[0].embedding == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    decoded = [np.frombuffer(base64.b64decode(d.embedding), "<f4").tolist() for d in packed.data]
    assert decoded == [d.embedding for d in floats.data]
    assert [d.index for d in default.data] == [0, 1] and default.model == "fake-model"
    assert default.usage.prompt_tokens == default.usage.total_tokens == 4


async def test_inputs_and_dimensions_reach_the_service(tmp_path: Path) -> None:
    service = FakeEmbeddings()
    async with node_app(tmp_path, service) as http:
        res = await http.post("/v1/embeddings", json={"input": [1, 2], "dimensions": 8})
        assert res.status_code == 200, res.text
        await http.post("/v1/embeddings", json={"input": [[1], [2, 3]], "user": "u"})
    assert service.calls == [([[1, 2]], 8), ([[1], [2, 3]], None)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [-1]}, "input"),
        ({}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": "8"}, "dimensions"),
        ('{"input": "\\ud800"}', None),  # a lone surrogate, as JSON escapes it
    ],
)
async def test_bad_requests_are_openai_400s(
    http: httpx.AsyncClient, body: dict[str, Any] | str, param: str | None
) -> None:
    if isinstance(body, str):
        headers = {"content-type": "application/json"}
        res = await http.post("/v1/embeddings", content=body.encode(), headers=headers)
    else:
        res = await http.post("/v1/embeddings", json=body)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (
            EmbeddingInputError("too long", code="context_length_exceeded"),
            400,
            "context_length_exceeded",
        ),
        (QueueFull(retry_after=4), 503, "queue_full"),
    ],
)
async def test_service_errors_keep_their_status(
    tmp_path: Path, error: Exception, status: int, code: str
) -> None:
    service = FakeEmbeddings()
    service.error = error
    async with node_app(tmp_path, service) as http:
        res = await http.post("/v1/embeddings", json={"input": "a"})
        assert res.status_code == status and res.json()["error"]["code"] == code
        if status == 503:
            assert res.headers["retry-after"] == "4"
        service.error = None
        assert (await http.post("/v1/embeddings", json={"input": "a"})).status_code == 200


async def test_a_node_without_embeddings_says_so(tmp_path: Path) -> None:
    async with node_app(tmp_path, None) as http:
        res = await http.post("/v1/embeddings", json={"input": "a"})
        assert res.status_code == 404
        assert res.json()["error"]["message"] == (
            "No node in the swarm serves embeddings for the model 'fake-model'."
        )
        card = (await http.get("/v1/models")).json()["data"][0]
        assert card["capabilities"] == [*GENERATION_CAPABILITIES]


async def test_models_advertise_embeddings(http: httpx.AsyncClient) -> None:
    card = (await http.get("/v1/models")).json()["data"][0]
    assert card["capabilities"] == [*GENERATION_CAPABILITIES, "embeddings"]
    info = (await http.get("/info")).json()["models"][0]
    assert "embeddings" in info["capabilities"]


async def test_embeddings_need_the_api_key(tmp_path: Path) -> None:
    async with node_app(tmp_path, FakeEmbeddings(), api_key=["k1"]) as http:
        res = await http.post("/v1/embeddings", json={"input": "a"})
        assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
        ok = await http.post(
            "/v1/embeddings", json={"input": "a"}, headers={"Authorization": "Bearer k1"}
        )
        assert ok.status_code == 200


async def test_embeddings_count_against_the_rate_limit(tmp_path: Path) -> None:
    async with node_app(tmp_path, FakeEmbeddings(), rate_limit=2) as http:
        statuses = [(await http.post("/v1/embeddings", json={"input": "a"})).status_code]
        statuses += [(await http.post("/v1/embeddings", json={"input": "a"})).status_code]
        statuses += [(await http.post("/v1/embeddings", json={"input": "a"})).status_code]
    assert statuses == [200, 200, 429]


# ------------------------------------------------------------------ LlamaNetClient.embed


class EmbeddingNodes:
    """A FAKE swarm behind `httpx.MockTransport`: node `name` at http://<name>.test answers
    `/v1/embeddings` with `answers[name]` (a status, or 200 with base64 vectors)."""

    def __init__(self, tmp_path: Path, capabilities: dict[str, list[str]]) -> None:
        self.records = [
            sign_record(
                NodeIdentity.load_or_create(tmp_path / name),
                url=f"http://{name}.test",
                models=[ModelInfo(id="m", n_ctx=512, capabilities=caps)],
                version="0",
                started_at=0.0,
                ttl=30.0,
            )
            for name, caps in capabilities.items()
        ]
        self.answers: dict[str, int] = {}
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host.removesuffix(".test")
        if request.url.path == "/nodes":
            return httpx.Response(200, json={"nodes": [r.model_dump() for r in self.records]})
        if request.url.path != "/v1/embeddings":  # the client's rtt probes
            return httpx.Response(200, json={"status": "ok"})
        self.calls.append(name)
        status = self.answers.get(name, 200)
        if status != 200:
            error = {"message": "no", "type": "invalid_request_error", "param": None, "code": "x"}
            return httpx.Response(status, json={"error": error}, headers={"Retry-After": "1"})
        body = json.loads(request.content)
        assert body["encoding_format"] == "base64"
        inputs = [body["input"]] if isinstance(body["input"], str) else body["input"]
        result = Embeddings(normalize(np.eye(len(inputs), 4) + 0.5), prompt_tokens=len(inputs))
        return httpx.Response(200, content=render(result, "base64", "m"))


def embedding_client(nodes: EmbeddingNodes) -> Any:
    from llamanet.client import LlamaNetClient

    return LlamaNetClient(
        nodes=["http://a.test"],
        refresh_interval=3600.0,
        transport=httpx.MockTransport(nodes.handler),
    )


async def test_client_embeds_only_on_nodes_that_advertise_it(tmp_path: Path) -> None:
    nodes = EmbeddingNodes(tmp_path, {"a": ["chat"], "b": ["chat", "embeddings"]})
    async with embedding_client(nodes) as client:
        for _ in range(5):
            got = await client.embed(["x", "y"], model="m")
            assert np.allclose(got, normalize(np.eye(2, 4) + 0.5), atol=1e-7)
        assert len(await client.embed("x")) == 1
    assert nodes.calls == ["b"] * 6


async def test_client_embed_fails_over_but_raises_a_callers_error(tmp_path: Path) -> None:
    from llamanet.client import NodeError, NoNodeAvailable

    nodes = EmbeddingNodes(tmp_path, {"a": ["embeddings"], "b": ["embeddings"]})
    nodes.answers = {"a": 503, "b": 503}
    async with embedding_client(nodes) as client:
        with pytest.raises(NoNodeAvailable) as caught:
            await client.embed(["x"])
        assert sorted(nodes.calls) == ["a", "b"] and len(caught.value.attempts) == 2
    nodes.answers, nodes.calls = {"a": 400, "b": 400}, []
    async with embedding_client(nodes) as client:
        with pytest.raises(NodeError) as error:
            await client.embed(["x"])
        assert error.value.status == 400 and len(nodes.calls) == 1  # not retried elsewhere


async def test_client_embed_without_a_capable_node(tmp_path: Path) -> None:
    from llamanet.client import NoNodeAvailable

    nodes = EmbeddingNodes(tmp_path, {"a": ["chat", "completions"]})
    async with embedding_client(nodes) as client:
        with pytest.raises(NoNodeAvailable, match="no node known serves embeddings"):
            await client.embed("x")
    assert nodes.calls == []
