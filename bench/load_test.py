"""Bounded load test: many concurrent streaming clients against one node, then a 2-node swarm.

    python bench/load_test.py [--clients 64] [--requests 3] [--max-tokens 24] [--queue-size 8]

(0) the baseline: one node with `--parallel 1`, one request at a time as the engine ran before
continuous batching (the same queue); (a) one node with its default slots; (b) two model nodes A
and B behind a `--no-model` gateway G, the clients all talking to G. Every client streams
`--requests` chat completions one after the other (a 503 is recorded, then it waits
`min(Retry-After, --retry-cap)`, 5 s by default). Loopback only; it stops by itself.

Each request ends as exactly one of: completed (a `finish_reason`, then `[DONE]`), 503 with
Retry-After, another failure (any other status, an error event, a transport error), or a
*silent truncation*: a 200 stream that ended with neither a `finish_reason` nor an error event
(the target is zero). The table also gives TTFT percentiles of the completed requests, the
model nodes' RSS (VmRSS) before, at peak and after, and whether every node was idle
(active 0, queued 0) and healthy afterwards, and the completions of (a) and (b) over (0).

With clients that send their next request the moment one ends, completions follow the node's
capacity (slots + queue) more than its speed: the first clients in keep every place, and the
others come back after Retry-After to find it full again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

COMPLETED, UNAVAILABLE, FAILED, TRUNCATED = "completed", "503+Retry-After", "other", "truncated"
OUTCOMES = (COMPLETED, UNAVAILABLE, FAILED, TRUNCATED)


@dataclass
class Outcome:
    kind: str
    ttft_ms: float | None = None
    detail: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    rss_kb: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # before, peak, after
    idle_after: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def ttft(self, q: float) -> float:
        values = sorted(o.ttft_ms for o in self.outcomes if o.ttft_ms is not None)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def details(self, kind: str) -> Counter[str]:
        return Counter(o.detail for o in self.outcomes if o.kind == kind)


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples VmRSS of some processes every 0.1 s in a thread, for the peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss_kb(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_kb(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def stream_once(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Outcome:
    """One streamed chat completion, classified."""
    started = time.perf_counter()
    ttft: float | None = None
    finish: str | None = None
    done = False
    try:
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as res:
            if res.status_code == 503:
                await res.aread()
                retry = res.headers.get("retry-after", "")
                if retry.isdigit() and int(retry) >= 1:
                    return Outcome(UNAVAILABLE, detail=retry)
                return Outcome(FAILED, detail="503 without Retry-After")
            if res.status_code != 200:
                await res.aread()
                return Outcome(FAILED, detail=f"status {res.status_code}")
            async for line in res.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    return Outcome(FAILED, detail=f"error event {event['error'].get('code')}")
                for choice in event.get("choices", []):
                    if ttft is None and choice.get("delta", {}).get("content"):
                        ttft = (time.perf_counter() - started) * 1000
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:  # the transport broke: visible to the client, not silent
        return Outcome(FAILED, detail=type(exc).__name__)
    if finish is not None and done:
        return Outcome(
            COMPLETED, ttft_ms=ttft if ttft is not None else (time.perf_counter() - started) * 1000
        )
    return Outcome(TRUNCATED, detail=f"finish={finish} done={done}")


async def run_clients(
    url: str,
    clients: int,
    requests: int,
    max_tokens: int,
    model: str | None = None,
    retry_cap: float = 1.0,
) -> list[Outcome]:
    """`clients` concurrent clients, each streaming `requests` chat completions in turn."""
    # idle pooled connections are dropped well before uvicorn's 5 s keep-alive timeout: reusing
    # one the server is closing at that very moment fails with a transport error (a client race)
    limits = httpx.Limits(
        max_connections=clients + 8, max_keepalive_connections=clients, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(120.0, connect=10.0)

    async def client(index: int, http: httpx.AsyncClient) -> list[Outcome]:
        out = []
        for n in range(requests):
            body: dict[str, Any] = {
                "messages": [
                    {
                        "role": "user",
                        "content": f"Client {index}, request {n}: tell "
                        "me a short story about a lighthouse.",
                    }
                ],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "stream": True,
            }
            if model:
                body["model"] = model
            outcome = await stream_once(http, url, body)
            out.append(outcome)
            if outcome.kind == UNAVAILABLE:
                await asyncio.sleep(min(float(outcome.detail), retry_cap))
        return out

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        results = await asyncio.gather(*(client(i, http) for i in range(clients)))
    return [outcome for per_client in results for outcome in per_client]


def idle_and_healthy(url: str, timeout: float = 60.0) -> bool:
    """Waits (bounded) until the node reports active 0 and queued 0; then /health must be 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(url + "/status", timeout=10).json()
        if status["active"] == 0 and status["queued"] == 0:
            return httpx.get(url + "/health", timeout=10).status_code == 200
        time.sleep(0.1)
    return False


def run_scenario(
    entry_url: str,
    model_nodes: dict[str, Any],
    *,
    clients: int,
    requests: int,
    max_tokens: int,
    model: str | None = None,
    retry_cap: float = 1.0,
) -> LoadResult:
    """The load against `entry_url`, watching the RSS of `model_nodes` (name -> NodeProcess)."""
    pids = {name: node.proc.pid for name, node in model_nodes.items()}
    before = {name: rss_kb(pid) for name, pid in pids.items()}
    result = LoadResult()
    started = time.perf_counter()
    with RssSampler(pids) as sampler:
        result.outcomes = asyncio.run(
            run_clients(entry_url, clients, requests, max_tokens, model, retry_cap)
        )
    result.seconds = time.perf_counter() - started
    for name, node in model_nodes.items():
        result.idle_after[name] = idle_and_healthy(node.url)
    for name, pid in pids.items():
        result.rss_kb[name] = (before[name], sampler.peak[name], rss_kb(pid))
    return result


def print_table(title: str, result: LoadResult, out: Callable[[str], None] = print) -> None:
    sent = len(result.outcomes)
    out(f"\n{title}  ({result.seconds:.1f} s)")
    out(f"  {'requests sent':34} {sent:>8}")
    out(f"  {'completed with finish_reason':34} {result.count(COMPLETED):>8}")
    waits = sorted(int(o.detail) for o in result.outcomes if o.kind == UNAVAILABLE)
    spread = (
        f"   (Retry-After {waits[0]}..{waits[-1]} s, median {waits[len(waits) // 2]})"
        if waits
        else ""
    )
    out(f"  {'503 with Retry-After':34} {result.count(UNAVAILABLE):>8}{spread}")
    other = result.count(FAILED)
    details = ", ".join(f"{k}: {n}" for k, n in result.details(FAILED).most_common(4))
    out(f"  {'other failures':34} {other:>8}" + (f"   ({details})" if other else ""))
    out(f"  {'silent truncations':34} {result.count(TRUNCATED):>8}")
    out(
        f"  {'TTFT p50 / p95 (completed), ms':34} {result.ttft(0.5):>8.0f} / "
        f"{result.ttft(0.95):.0f}"
    )
    for name, (before, peak, after) in result.rss_kb.items():
        out(
            f"  {'RSS ' + name + ' before / peak / after, MiB':34} {before / 1024:>8.0f} / "
            f"{peak / 1024:.0f} / {after / 1024:.0f}"
        )
    idle = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in result.idle_after.items())
    out(f"  {'idle (active 0, queued 0) + healthy':34} {idle}")


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    from llamanet.cli.launcher import launch_node, wait_for_swarm
    from llamanet.node.config import default_home
    from llamanet.node.model_store import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3, help="streams per client, in turn")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--queue-size", type=int, default=8)
    ap.add_argument(
        "--retry-cap",
        type=float,
        default=5.0,
        help="a client waits min(Retry-After, this) after a 503",
    )
    args = ap.parse_args()

    model = resolve_model(None, default_home() / "models")  # pulled if missing
    tmp = Path(tempfile.mkdtemp(prefix="llamanet-load-"))
    common = [
        "--model",
        str(model),
        "--model-id",
        "load",
        "--queue-size",
        str(args.queue_size),
        "--log-level",
        "warning",
    ]
    print(
        f"load test: {args.clients} concurrent streaming clients x {args.requests} requests, "
        f"max_tokens {args.max_tokens}, queue size {args.queue_size}, retry after a 503 "
        f"within {args.retry_cap:g} s; loopback only"
    )
    start_load = os.getloadavg()

    def one_node(extra: list[str], tag: str) -> LoadResult:
        node = launch_node([*common, "--n-threads", "2", *extra], tmp / tag)
        try:
            return run_scenario(
                node.url,
                {"node": node},
                clients=args.clients,
                requests=args.requests,
                max_tokens=args.max_tokens,
                retry_cap=args.retry_cap,
            )
        finally:
            node.stop()

    baseline = one_node(["--parallel", "1"], "baseline")
    one = one_node([], "single")

    a = launch_node([*common, "--n-threads", "1"], tmp / "a")
    b = g = None
    try:
        b = launch_node([*common, "--n-threads", "1", "--bootstrap", a.bootstrap], tmp / "b")
        g = launch_node(
            ["--no-model", "--bootstrap", a.bootstrap, "--log-level", "warning"], tmp / "g"
        )
        wait_for_swarm([a, b, g])
        deadline = time.monotonic() + 30
        while sum(m["nodes"] for m in g.get("/v1/models").json()["data"]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never saw both model nodes")
            time.sleep(0.2)
        swarm = run_scenario(
            g.url,
            {"A": a, "B": b},
            clients=args.clients,
            requests=args.requests,
            max_tokens=args.max_tokens,
            model="load",
            retry_cap=args.retry_cap,
        )
        swarm.idle_after["G"] = idle_and_healthy(g.url)
        served = {name: n.status()["requests_completed"] for name, n in (("A", a), ("B", b))}
    finally:
        for node in (g, b, a):
            if node is not None:
                node.stop()

    print_table("(0) baseline: one node, --parallel 1 (one request at a time)", baseline)
    print_table("(a) one node, default --parallel", one)
    print_table("(b) 2-node swarm (A, B) through a --no-model gateway", swarm)
    print(f"  {'completed by A / B':34} {served['A']:>8} / {served['B']}")
    runs = (baseline, one, swarm)
    bad = sum(r.count(TRUNCATED) for r in runs)
    print(
        f"\ntotal: {sum(len(r.outcomes) for r in runs)} requests, {bad} silent truncations, "
        f"{sum(r.count(FAILED) for r in runs)} other failures"
    )
    base = max(1, baseline.count(COMPLETED))
    print(
        f"completed over the baseline (0): one node {one.count(COMPLETED) / base:.2f}x, "
        f"the swarm {swarm.count(COMPLETED) / base:.2f}x; the swarm over one node "
        f"{swarm.count(COMPLETED) / max(1, one.count(COMPLETED)):.2f}x"
    )
    end_load = os.getloadavg()
    print(
        f"load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in start_load)}, "
        f"end {' '.join(f'{x:.2f}' for x in end_load)} on {os.cpu_count()} cores"
    )
    ok = bad == 0 and all(all(r.idle_after.values()) for r in runs)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
