"""DHT benchmark: an in-process swarm on 127.0.0.1, LlamaNet's DHT against stock `kademlia`.

    python bench/dht_bench.py [--peers 200] [--heartbeat 10] [--lookups 100]

Every peer runs `Presence` (a signed record published every heartbeat, ttl 3 heartbeats), serving
one of `--models` models. Measured: bootstrap of the whole swarm, publish latency, lookup latency
and completeness (share of lookups that return every live publisher of the model), steady-state
CPU of the whole swarm (process CPU time / wall time, heartbeats only), then the same right after
10 % of the peers are killed abruptly (no tombstone) and again once their records' ttl has run out.
The baseline, measured in the same run after LlamaNet's swarm is stopped, is a stock
`kademlia.network.Server` swarm of the same size: bootstrap, `set`/`get` latency, and what a
reader of a key written by many peers sees (last writer wins).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kademlia.network import Server

from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.dht import DHTNode, Presence
from llamanet.swarm.identity import NodeIdentity


class TimedDHTNode(DHTNode):
    """Records how long each publish takes."""

    publish_times: list[float]

    async def publish(self, record: NodeRecord) -> None:
        start = time.perf_counter()
        await super().publish(record)
        self.publish_times.append(time.perf_counter() - start)


@dataclass
class Peer:
    dht: TimedDHTNode
    identity: NodeIdentity
    model: str
    presence: Presence | None = None
    alive: bool = True


@dataclass
class Lookups:
    latencies: list[float] = field(default_factory=list)
    complete: int = 0
    stale: int = 0  # dead peers still returned

    def add(self, latency: float, complete: bool, stale: int) -> None:
        self.latencies.append(latency)
        self.complete += complete
        self.stale += stale


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def describe_for(peer_port: int, model: str) -> Callable[[], dict[str, Any]]:
    started = time.time()

    def describe() -> dict[str, Any]:
        return {
            "url": f"http://127.0.0.1:{peer_port}",
            "models": [ModelInfo(id=model, n_ctx=4096, quantization="Q4_K_M")],
            "load": random.random(),
            "active": random.randint(0, 2),
            "queued": random.randint(0, 3),
            "capacity": 2,
            "tokens_per_second": 40.0,
            "ttft_ms": 120.0,
            "version": "0.1.0",
            "started_at": started,
        }

    return describe


# --------------------------------------------------------------------------- LlamaNet swarm


async def run_llamanet(args: argparse.Namespace) -> dict[str, Any]:
    models = [f"model-{i}" for i in range(args.models)]
    peers: list[Peer] = []
    for index in range(args.peers):
        identity = NodeIdentity.generate()
        dht = TimedDHTNode(identity)
        dht.publish_times = []
        await dht.start()
        peers.append(Peer(dht, identity, models[index % len(models)]))

    start = time.perf_counter()
    for index, peer in enumerate(peers[1:], start=1):
        seed = peers[random.randrange(index)]
        await peer.dht.bootstrap([("127.0.0.1", seed.dht.port)])
    bootstrap_s = time.perf_counter() - start
    table_sizes = [p.dht.status()["routing_table_size"] for p in peers]

    # presences start spread over one heartbeat, as independent nodes would
    for peer in peers:
        peer.presence = Presence(
            peer.dht,
            peer.identity,
            describe_for(9000 + peers.index(peer), peer.model),
            heartbeat=args.heartbeat,
        )
        await peer.presence.start()
        await asyncio.sleep(args.heartbeat / len(peers))
    for peer in peers:
        peer.dht.publish_times.clear()  # measure steady-state publishes only
    gc.freeze()  # see main()
    await asyncio.sleep(2.0)

    async def lookups(count: int, model_for: Callable[[], str | None]) -> Lookups:
        result = Lookups()
        for _ in range(count):
            reader = random.choice([p for p in peers if p.alive])
            model = model_for()
            expected = {
                p.identity.node_id for p in peers if p.alive and (model is None or p.model == model)
            }
            dead = {p.identity.node_id for p in peers if not p.alive}
            begin = time.perf_counter()
            found = await reader.dht.find_nodes(model)
            latency = time.perf_counter() - begin
            ids = {r.node_id for r in found}
            result.add(latency, expected <= ids, len(ids & dead))
            await asyncio.sleep(args.gap)
        return result

    alive_model = await lookups(args.lookups, lambda: random.choice(models))
    alive_all = await lookups(args.lookups // 5, lambda: None)
    publishes = [t for p in peers for t in p.dht.publish_times]

    # steady state: heartbeats only
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(args.cpu_window)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)

    # kill 10 % abruptly: no tombstone, socket closed
    victims = random.sample(peers, max(1, round(args.kill * len(peers))))
    for peer in victims:
        assert peer.presence is not None
        for task in peer.presence._tasks:
            task.cancel()
        await peer.dht.stop()
        peer.alive = False
    dead_now = await lookups(args.lookups, lambda: random.choice(models))
    wait = 3 * args.heartbeat + 2.0
    await asyncio.sleep(max(0.0, wait - sum(dead_now.latencies) - args.lookups * args.gap))
    dead_later = await lookups(args.lookups, lambda: random.choice(models))

    invalid: dict[str, int] = {}
    for peer in peers:
        for reason, count in peer.dht.status()["invalid_records"].items():
            invalid[reason] = invalid.get(reason, 0) + count
    for peer in peers:
        if peer.alive:
            assert peer.presence is not None
            for task in peer.presence._tasks:
                task.cancel()
            await peer.dht.stop()
    return {
        "bootstrap_s": bootstrap_s,
        "table_sizes": table_sizes,
        "publishes": publishes,
        "alive_model": alive_model,
        "alive_all": alive_all,
        "dead_now": dead_now,
        "dead_later": dead_later,
        "cpu": cpu,
        "invalid": invalid,
        "killed": len(victims),
    }


# --------------------------------------------------------------------------- stock baseline


async def run_stock(args: argparse.Namespace) -> dict[str, Any]:
    servers = [Server() for _ in range(args.peers)]
    ports = []
    for server in servers:
        await server.listen(0, interface="127.0.0.1")
        ports.append(server.transport.get_extra_info("sockname")[1])
    start = time.perf_counter()
    for index, server in enumerate(servers[1:], start=1):
        await server.bootstrap([("127.0.0.1", ports[random.randrange(index)])])
    bootstrap_s = time.perf_counter() - start
    gc.freeze()

    sets, gets = [], []
    keys = [f"key-{i}" for i in range(args.lookups)]
    for key in keys:
        begin = time.perf_counter()
        await random.choice(servers).set(key, "x" * 250)
        sets.append(time.perf_counter() - begin)
    found = 0
    for key in keys:
        begin = time.perf_counter()
        found += await random.choice(servers).get(key) is not None
        gets.append(time.perf_counter() - begin)

    # many writers of one key: what does a reader see?
    writers = servers[: args.peers // args.models]
    for index, server in enumerate(writers):
        await server.set("model:shared", f"writer-{index}")
    seen = set()
    for _ in range(10):
        seen.add(await random.choice(servers).get("model:shared"))

    # 10 % dead: gets run concurrently so a 5 s stall does not stretch the run
    victims = random.sample(range(1, len(servers)), max(1, round(args.kill * len(servers))))
    for index in victims:
        servers[index].stop()
    live = [s for i, s in enumerate(servers) if i not in set(victims)]

    async def timed_get(key: str) -> float:
        begin = time.perf_counter()
        await random.choice(live).get(key)
        return time.perf_counter() - begin

    dead_gets = list(await asyncio.gather(*(timed_get(k) for k in keys[: args.lookups // 2])))
    for server in live:
        server.stop()
    return {
        "bootstrap_s": bootstrap_s,
        "sets": sets,
        "gets": gets,
        "found": found,
        "writers": len(writers),
        "seen": len(seen),
        "dead_gets": dead_gets,
    }


# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, ours: dict[str, Any], stock: dict[str, Any] | None) -> None:
    rows: list[tuple[str, str, str, str, str]] = []

    def row(name: str, value: str, base: str = "", ratio: str = "", target: str = "") -> None:
        rows.append((name, value, base, ratio, target))

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    def lookup_rows(label: str, lk: Lookups, base: list[float] | None, target: str) -> None:
        n = len(lk.latencies)
        p50, p95 = statistics.median(lk.latencies), pct(lk.latencies, 0.95)
        b50 = statistics.median(base) if base else 0.0
        b95 = pct(base, 0.95) if base else 0.0
        row(f"lookup median (ms), {label}", ms(p50), ms(b50) if base else "", ratio(p50, b50))
        row(f"lookup p95 (ms), {label}", ms(p95), ms(b95) if base else "", ratio(p95, b95), target)
        row(f"lookup max (ms), {label}", ms(max(lk.latencies)), ms(max(base)) if base else "")
        row(
            f"completeness, {label}",
            f"{100 * lk.complete / n:.0f}% ({lk.complete}/{n})",
            "",
            "",
            "100%",
        )
        row(f"dead peers returned, {label}", f"{lk.stale} in {n} lookups")

    b = stock or {}
    row(
        "bootstrap, whole swarm (s)",
        f"{ours['bootstrap_s']:.2f}",
        f"{b['bootstrap_s']:.2f}" if b else "",
        ratio(ours["bootstrap_s"], b.get("bootstrap_s", 0)),
    )
    sizes = ours["table_sizes"]
    row("routing table size (median)", f"{statistics.median(sizes):.0f}")
    pub = ours["publishes"]
    sets = b.get("sets", [])
    row(
        "publish median (ms) [stock: set]",
        ms(statistics.median(pub)),
        ms(statistics.median(sets)) if sets else "",
        ratio(statistics.median(pub), statistics.median(sets)) if sets else "",
    )
    row(
        "publish p95 (ms) [stock: set]",
        ms(pct(pub, 0.95)),
        ms(pct(sets, 0.95)) if sets else "",
        ratio(pct(pub, 0.95), pct(sets, 0.95)) if sets else "",
    )
    lookup_rows("all alive", ours["alive_model"], b.get("gets"), "<= 50")
    if b:
        row(
            "  stock: readers of a key written by N peers see",
            "every writer",
            f"{b['seen']} of {b['writers']}",
        )
    all_nodes = ours["alive_all"]
    row(
        "find_nodes(None) median / p95 (ms), 16 shards",
        f"{ms(statistics.median(all_nodes.latencies))} / {ms(pct(all_nodes.latencies, 0.95))}",
    )
    row(
        "find_nodes(None) completeness",
        f"{100 * all_nodes.complete / len(all_nodes.latencies):.0f}%",
        "",
        "",
        "100%",
    )
    row("steady CPU, whole swarm (cores)", f"{ours['cpu']:.2f}", "", "", "< 0.5")
    lookup_rows(f"{ours['killed']} killed, at once", ours["dead_now"], b.get("dead_gets"), "<= 250")
    lookup_rows(f"{ours['killed']} killed, after ttl", ours["dead_later"], None, "<= 250")
    row("invalid records seen (all peers)", str(ours["invalid"] or "none"))
    row(
        "peak RSS of the process (MB)",
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
    )

    print()
    print(
        f"DHT bench: {args.peers} peers in one process on 127.0.0.1, {args.models} models, "
        f"heartbeat {args.heartbeat:g} s (ttl {3 * args.heartbeat:g} s), k=20, alpha=3"
    )
    print(
        "stock get stops at the first value it finds (often in its own storage); a llamanet "
        "lookup merges every record of the k closest peers"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load} on {os.cpu_count()} cores (other work adds latency)")
    header = ("metric", "llamanet", "stock kademlia", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for line in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.05, help="pause between lookups (s)")
    parser.add_argument("--cpu-window", type=float, default=20.0)
    parser.add_argument("--kill", type=float, default=0.10)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)

    # All peers share one process here, so a full garbage collection walks the objects of every
    # peer at once (pauses of ~0.4 s were seen); a real node's heap is 1/N of that. Objects alive
    # after setup are frozen out of collection to keep that artefact out of the latencies.
    began = time.perf_counter()
    ours = asyncio.run(run_llamanet(args))
    gc.unfreeze()
    gc.collect()
    stock = None if args.no_baseline else asyncio.run(run_stock(args))
    report(args, ours, stock)
    print(f"(bench took {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
