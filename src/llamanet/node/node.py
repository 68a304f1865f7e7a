"""A running node: its engine, identity, DHT presence and counters, started and stopped together.

The node is what the HTTP routes read (`request.app.state.node`); what it offers them is named and
small: `settings`, `node_id`, `engine`, `embeddings`, `gateway`, `metrics`, `started_at`,
`load_error`, `ready`/`loading`, `capabilities()`, `models()`, `status()`, `info()`,
`find_nodes()`, `dht_status()`. The gateway and the metrics collector get callables at
construction, never the node.

`LlamaNetNode(settings, engine=..., embeddings=...)` serves the given engine (and embedding
service) instead of loading a model, and `dht=False` starts neither the DHT nor the gateway: an
in-process node for tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from llamanet._version import __version__
from llamanet.node.config import NodeSettings
from llamanet.node.embeddings import EmbeddingService
from llamanet.node.engine import LlamaEngine, default_gpu_layers
from llamanet.node.engine_api import Engine
from llamanet.node.fingerprint import model_fingerprint, runtime_build
from llamanet.node.gateway import Gateway
from llamanet.node.metrics import Metrics
from llamanet.node.model_store import model_id_for, resolve_model
from llamanet.protocol import ModelInfo, NodeInfo, NodeRecord, NodeStatus
from llamanet.swarm.addresses import parse_hostport
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.membership import swarm_id

if TYPE_CHECKING:
    from llamanet.swarm.dht import DHTNode, Presence

__all__ = ["LlamaNetNode"]

log = logging.getLogger(__name__)
announce = logging.getLogger("llamanet.ready")  # addresses: logged whatever the log level

# What the generation routes do with any model (`llamanet.node.work`): tool calls, structured
# output and logprobs are properties of the sampler, not of the model.
GENERATION_CAPABILITIES = ("chat", "completions", "tools", "json_schema", "logprobs", "responses")


class LlamaNetNode:
    """Everything one `llamanet node` process runs (see the module docstring)."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        engine: Engine | None = None,
        dht: bool = True,
        embeddings: EmbeddingService | None = None,
    ) -> None:
        self.settings = settings
        self._identity = NodeIdentity.load_or_create(settings.home)
        self.node_id: str = self._identity.node_id
        self.url = settings.public_url or f"http://{settings.host}:{settings.port}"
        self.started_at = time.time()
        self.engine: Engine | None = engine  # the node owns it: closed by `stop()`
        # `/v1/embeddings`: made with the model it embeds with (lazily loaded: see embeddings.py)
        self.embeddings: EmbeddingService | None = embeddings
        self.load_error: str | None = None
        # the id the model being loaded will serve under, once its file is found
        self.loading_model_id: str | None = settings.model_id
        self.gateway: Gateway | None = None
        self.metrics = Metrics(status=self.status, dht_status=self.dht_status)
        self._with_dht = dht
        self._dht: DHTNode | None = None
        self._presence: Presence | None = None
        self._requests_forwarded = 0
        self._swarm = swarm_id(settings.swarm_key)
        self._loading: asyncio.Task[None] | None = None
        # the model's identity for stream resumption (llamanet.node.fingerprint); None until
        # hashed, and for an engine handed in (tests): such a node never resumes a stream
        self.fingerprint: str | None = None
        self.runtime: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Starts the DHT at once and loads the model in the background (health says 503 until)."""
        if self.engine is None and not self.settings.no_model:
            self._loading = asyncio.create_task(self._load_engine(), name="load-model")
        if not self._with_dht:
            return
        await self._start_dht()
        s = self.settings
        if s.forward:
            self.gateway = Gateway(
                node_id=self.node_id,
                find_nodes=self.find_nodes,
                swarm_key=s.swarm_key,
                heartbeat=s.heartbeat,
                request_timeout=s.request_timeout,
                on_forwarded=self._count_forwarded,
                first_byte_timeout=s.first_byte_timeout,
                stall_timeout=s.stall_timeout,
            )
            if self._dht is not None:  # a node that leaves is dropped at once, not at a refresh
                self._dht.on_withdrawn(self.gateway.withdrawn)
            self.gateway.start()

    def _count_forwarded(self) -> None:
        self._requests_forwarded += 1

    async def _load_engine(self) -> None:
        s = self.settings
        try:
            path = await asyncio.to_thread(resolve_model, s.model, s.models_dir)
            model_id = s.model_id or model_id_for(path)
            self.loading_model_id = model_id
            log.info("loading model %s from %s (n_ctx=%d per slot)", model_id, path, s.n_ctx)
            hashing = asyncio.create_task(model_fingerprint(path, s.home))
            self.engine = await LlamaEngine.load(
                path,
                model_id=model_id,
                n_ctx=s.n_ctx,
                n_threads=s.n_threads or os.cpu_count(),
                n_batch=s.n_batch,
                parallel=s.parallel,
                queue_size=s.queue_size,
                n_gpu_layers=s.n_gpu_layers,
            )
            if s.embeddings and self.embeddings is None:
                self.embeddings = EmbeddingService(
                    path,
                    n_ctx=s.n_ctx,
                    n_threads=s.n_threads or os.cpu_count(),
                    queue_size=s.queue_size,
                )
            try:
                self.fingerprint, self.runtime = await hashing, runtime_build()
            except OSError as exc:  # the node serves; its streams just cannot be resumed
                log.warning("could not fingerprint the model: %s", exc)
            log.info("model %s ready (fingerprint %s)", model_id, self.fingerprint)
            if self._presence is not None:  # announce the model now, not at the next heartbeat
                await self._presence.beat()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("could not load the model: %s", exc)

    async def _start_dht(self) -> None:
        from llamanet.swarm.dht import DHTNode, Presence

        s = self.settings
        dht = DHTNode(self._identity)
        try:
            await dht.start(s.dht_host or s.host, s.dht_port)
        except OSError as exc:
            log.error(
                "DHT could not listen on UDP %s: %s; serving without discovery", s.dht_port, exc
            )
            return
        self._dht = dht
        announce.info("DHT listening on udp %s:%s", s.dht_host or s.host, dht.port)
        peers = [parse_hostport(p) for p in s.bootstrap]
        self._presence = Presence(
            dht,
            self._identity,
            self._describe,
            heartbeat=s.heartbeat,
            bootstrap=peers,
            peers_file=s.home / "peers.json",  # to rejoin after a restart, bootstrap or not
        )
        await self._presence.start()

    async def drain(self, grace: float) -> None:
        """The start of a shutdown: requests running or queued get `grace` seconds to finish,
        then the engine ends the rest, each with a `shutting_down` error (an SSE error event
        once a stream has started; a 503 before), so a client or the swarm's resume knows why
        and none is cut off mid-stream. Streams this node relays for peers end the same way
        (`Gateway.drain`)."""
        drains = [self._drain_engine(grace)]
        if self.gateway is not None:
            drains.append(self.gateway.drain(grace))
        await asyncio.gather(*drains)

    async def _drain_engine(self, grace: float) -> None:
        engine = self.engine
        if engine is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if engine.stats.held:
            log.info("shutting down: %d request(s) get %g s to finish", engine.stats.held, grace)
        # polled: the counters change in several job hooks, and this runs once, for `grace` s
        while engine.stats.held and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if engine.stats.held:
            log.info("shutting down: ending %d unfinished request(s)", engine.stats.held)
        engine.begin_close()

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self._presence is not None:
            try:
                await asyncio.wait_for(self._presence.stop(), 5.0)
                log.info("withdrew node %s from the DHT", self.node_id[:12])
            except Exception as exc:  # leaving the DHT is best effort
                log.warning("could not withdraw from the DHT: %s", exc)
        if self._dht is not None:
            await self._dht.stop()
        if self.embeddings is not None:
            await self.embeddings.close()
        if self.engine is not None:
            await self.engine.close()

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """Serving: the model is loaded (or the node was started without one)."""
        return self.settings.no_model or self.engine is not None

    @property
    def loading(self) -> bool:
        """The model is still being loaded (it has not failed)."""
        return self.engine is None and not self.settings.no_model and self.load_error is None

    def capabilities(self) -> list[str]:
        """What this node serves of its model: its record and `/v1/models` advertise it."""
        if self.engine is None:
            return []
        served = list(GENERATION_CAPABILITIES)
        if self.embeddings is not None:
            served.append("embeddings")
        return served

    def models(self) -> list[ModelInfo]:
        e = self.engine
        if e is None:
            return []
        return [
            ModelInfo(
                id=e.model_id,
                n_ctx=e.n_ctx,
                quantization=e.quantization,
                capabilities=self.capabilities(),
                fingerprint=self.fingerprint,
                runtime=self.runtime,
            )
        ]

    def _describe(self) -> dict[str, Any]:
        """The live, unsigned fields of this node's DHT record."""
        e = self.engine
        stats = e.stats if e else None
        return {
            "url": self.url,
            "models": self.models(),
            "load": round(e.utilization, 3) if e else 0.0,
            "active": stats.active if stats else 0,
            "queued": stats.queued if stats else 0,
            "capacity": e.capacity if e else 0,
            "slots": e.parallel if e else 0,
            "tokens_per_second": round(stats.tokens_per_second, 2) if stats else 0.0,
            "ttft_ms": round(stats.ttft_ms, 2) if stats else 0.0,
            "version": __version__,
            "started_at": self.started_at,
            "swarm": self._swarm,
        }

    def _own_record(self) -> NodeRecord:
        from llamanet.swarm.records import sign_record

        seq = self._presence.seq if self._presence is not None else 0
        return sign_record(
            self._identity, seq=seq, ttl=3 * self.settings.heartbeat, **self._describe()
        )

    def status(self) -> NodeStatus:
        e = self.engine
        s = e.stats if e else None
        return NodeStatus(
            node_id=self.node_id,
            models=[m.id for m in self.models()],
            load=round(e.utilization, 3) if e else 0.0,
            active=s.active if s else 0,
            queued=s.queued if s else 0,
            capacity=e.capacity if e else 0,
            queue_size=e.queue_size if e else 0,
            tokens_per_second=round(s.tokens_per_second, 2) if s else 0.0,
            ttft_ms=round(s.ttft_ms, 2) if s else 0.0,
            uptime_s=round(time.time() - self.started_at, 1),
            requests_total=s.requests_total if s else 0,
            requests_completed=s.requests_completed if s else 0,
            requests_cancelled=s.requests_cancelled if s else 0,
            requests_failed=s.requests_failed if s else 0,
            requests_rejected=s.requests_rejected if s else 0,
            requests_forwarded=self._requests_forwarded,
            tokens_generated=s.tokens_generated if s else 0,
            slots=e.parallel if e else 0,
            slots_busy=s.active if s else 0,
            aggregate_tokens_per_second=round(s.aggregate_tokens_per_second, 2) if s else 0.0,
            prompt_tokens_evaluated=s.prompt_tokens_evaluated if s else 0,
            prompt_tokens_reused=s.prompt_tokens_reused if s else 0,
            prefix_cache_hits=s.prefix_cache_hits if s else 0,
            decode_steps=s.decode_steps if s else 0,
            batch_tokens=s.batch_tokens if s else 0,
            slot_moves=s.slot_moves if s else 0,
        )

    def info(self) -> NodeInfo:
        e = self.engine
        meta = {
            k: v
            for k, v in (e.metadata.items() if e else ())
            if not k.startswith("tokenizer.ggml.") and len(str(v)) < 200
        }
        return NodeInfo(
            node_id=self.node_id,
            version=__version__,
            url=self.url,
            models=self.models(),
            model_path=str(e.model_path) if e else None,
            n_threads=self.settings.n_threads,
            parallel=e.parallel if e else None,
            n_gpu_layers=e.n_gpu_layers if e else 0,
            gpu_offload_supported=default_gpu_layers() != 0,
            started_at=self.started_at,
            metadata=meta,
        )

    async def find_nodes(self, model: str | None = None) -> list[NodeRecord]:
        """Live records from the DHT, this node's own always included when it serves `model`."""
        found: list[NodeRecord] = []
        if self._dht is not None:
            try:
                found = await self._dht.find_nodes(model)
            except Exception as exc:
                log.warning("DHT lookup failed: %s", exc)
        # ours is fresher from memory; other swarms' records are not ours to route to
        found = [r for r in found if r.node_id != self.node_id and r.swarm == self._swarm]
        own = self._own_record()
        if own.serves(model) and (own.models or model is None):
            found.append(own)
        return found

    def dht_status(self) -> dict[str, Any]:
        """The DHT's and the heartbeat's state (`GET /dht/status`); `enabled: False` without."""
        if self._presence is not None:
            return self._presence.status()
        if self._dht is not None:
            return self._dht.status()
        return {"node_id": self.node_id, "enabled": False}
