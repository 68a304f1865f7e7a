"""The gap in a stream at a failover: last token before a SIGKILL of the serving node -> first
token after, through a `--no-model` gateway, over a few kills (p50, max), against the median
inter-token gap of the same streams before the kill (the baseline measured in the same run).

    PYTHONPATH=src python bench/failover_bench.py [--kills 5] [--cut 30] [--tokens 120]

Real processes, one llama.cpp thread each; a killed node is replaced before the next run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from llamanet.cli.launcher import NodeProcess, spawn_node, wait_healthy
from llamanet.node.model_store import default_model_path

PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


def start(args: list[str]) -> NodeProcess:
    home = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    return wait_healthy(
        spawn_node(["--heartbeat", "1", *args], home, env={"LLAMANET_N_THREADS": "1"})
    )


def wait_for_models(g: NodeProcess, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = {m["id"]: m for m in g.get("/v1/models").json()["data"]}
        if data.get("alpha", {}).get("nodes") == count:
            return
        time.sleep(0.2)
    raise SystemExit("the gateway never saw the model nodes")


def one_run(
    g: NodeProcess, nodes: dict[str, NodeProcess], cut: int, tokens: int
) -> tuple[float, float, NodeProcess]:
    body = {
        "model": "alpha",
        "messages": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    times: list[float] = []
    killed: NodeProcess | None = None
    with httpx.stream("POST", g.url + "/v1/chat/completions", json=body, timeout=120) as r:
        serving = nodes[r.headers["x-llamanet-node"]]
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
                if len(times) == cut:
                    serving.proc.kill()
                    killed = serving
    assert killed is not None and len(times) > cut, "the stream ended before the kill"
    before = statistics.median(b - a for a, b in itertools.pairwise(times[:cut]))
    return times[cut] - times[cut - 1], before, killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--cut", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=120)
    args = parser.parse_args()
    model = str(default_model_path(Path.home() / ".llamanet" / "models"))
    g = start(["--no-model"])
    live: list[NodeProcess] = []
    try:
        for _ in range(2):
            live.append(
                start(["--model", model, "--model-id", "alpha", "--bootstrap", g.bootstrap])
            )
        wait_for_models(g, 2)
        gaps, baseline = [], []
        for i in range(args.kills):
            nodes = {n.get("/info").json()["node_id"]: n for n in live}
            gap, before, killed = one_run(g, nodes, args.cut, args.tokens)
            gaps.append(gap)
            baseline.append(before)
            print(
                f"kill {i + 1}: gap {gap * 1000:7.0f} ms"
                f"   (inter-token before: {before * 1000:5.0f} ms)"
            )
            killed.kill()
            live.remove(killed)
            live.append(
                start(["--model", model, "--model-id", "alpha", "--bootstrap", g.bootstrap])
            )
            wait_for_models(g, 2)
        p50, base = statistics.median(gaps), statistics.median(baseline)
        print(f"\n{'':22}{'p50':>9}{'max':>9}")
        print(f"{'failover gap (ms)':22}{p50 * 1000:9.0f}{max(gaps) * 1000:9.0f}")
        print(f"{'inter-token gap (ms)':22}{base * 1000:9.0f}{max(baseline) * 1000:9.0f}")
        print(f"{'ratio':22}{p50 / base:9.1f}")
    finally:
        for node in [*live, g]:
            node.stop()


if __name__ == "__main__":
    main()
