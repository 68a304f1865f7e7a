"""Node state: `NodeRecord` (what a node publishes in the DHT), `/status`, `/info`, `/nodes`.

What the swarm knows of a node rather than what a request asks: the signed record peers and
clients choose nodes by (`llamanet.swarm.records` signs and verifies it), the node's counters
and its description.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ModelInfo", "NodeInfo", "NodeList", "NodeRecord", "NodeStatus"]


class ModelInfo(BaseModel):
    id: str
    n_ctx: int
    quantization: str | None = None
    # what a node serves of the model: "chat", "completions", "embeddings", "tools", ...
    capabilities: list[str] = Field(default_factory=list)
    # short sha256 of the GGUF file and the llama.cpp runtime: a stream resumes only on a node
    # where both are the same
    fingerprint: str | None = None
    runtime: str | None = None


class NodeStatus(BaseModel):
    node_id: str
    models: list[str]
    load: float
    active: int
    queued: int
    capacity: int
    queue_size: int
    tokens_per_second: float
    ttft_ms: float
    uptime_s: float
    requests_total: int
    requests_completed: int
    requests_cancelled: int
    requests_failed: int
    requests_rejected: int
    requests_forwarded: int = 0
    tokens_generated: int
    slots: int = 0  # sequences the engine batches together (--parallel)
    slots_busy: int = 0
    aggregate_tokens_per_second: float = 0.0  # every stream together, while generating
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0  # prompt tokens whose KV was already there (prefix reuse)
    prefix_cache_hits: int = 0
    decode_steps: int = 0
    batch_tokens: int = 0  # tokens in the last llama_decode batch
    slot_moves: int = 0  # sequences moved to close gaps between busy slots


class NodeInfo(BaseModel):
    node_id: str
    version: str
    url: str
    models: list[ModelInfo]
    model_path: str | None = None
    n_threads: int | None = None
    parallel: int | None = None
    n_gpu_layers: int = 0  # layers offloaded to a GPU (-1: all); 0 on a CPU-only build
    gpu_offload_supported: bool = False
    started_at: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class NodeRecord(BaseModel):
    """What a node publishes in the DHT; `signature` covers every other field.

    `public_key` and `signature` are hex; `ttl` is seconds of life left when the record was
    issued (peers exchange remaining ttl, so no synchronized clocks are needed).
    """

    node_id: str
    public_key: str
    url: str
    models: list[ModelInfo] = Field(default_factory=list)
    load: float = 0.0
    active: int = 0
    queued: int = 0
    capacity: int = 1
    slots: int = 0  # batched sequences: a node with active < slots starts a request at once
    tokens_per_second: float = 0.0
    ttft_ms: float = 0.0
    version: str
    started_at: float
    seq: int
    issued_at: float
    ttl: float
    withdrawn: bool = False  # a tombstone: the node left; replaces its earlier records at once
    swarm: str = (
        ""  # public id of a private swarm (see llamanet.swarm.membership); "" = the open swarm
    )
    signature: str = ""

    def serves(self, model: str | None) -> bool:
        return model is None or any(m.id == model for m in self.models)

    def n_ctx_for(self, model: str | None) -> int | None:
        for info in self.models:
            if model is None or info.id == model:
                return info.n_ctx
        return None


class NodeList(BaseModel):
    """`GET /nodes`: the live records this node knows (itself included)."""

    nodes: list[NodeRecord]
