"""Forwarding overhead: the same streamed request sent straight to node B and through node A.

    python bench/gateway_bench.py [--reps 7] [--tokens 128] [--threads 2]

B serves the default model; A holds no model (`--no-model`) and forwards to B. Direct and
forwarded requests are interleaved; medians over the reps. Reports the time to first token
added by the hop (target <= 3 ms at p50) and the tokens/s ratio through A (target >= 0.98).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import Run, http_run

from llamanet.cli.launcher import launch_node, wait_for_swarm
from llamanet.node.config import default_home
from llamanet.node.model_store import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    model = resolve_model(None, default_home() / "models")  # pulled if missing
    tmp = Path(tempfile.mkdtemp(prefix="llamanet-gw-bench-"))
    b = launch_node(
        [
            "--model",
            str(model),
            "--model-id",
            "bench",
            "--n-threads",
            str(args.threads),
            "--log-level",
            "warning",
        ],
        tmp / "b",
    )
    a = launch_node(["--no-model", "--bootstrap", b.bootstrap, "--log-level", "warning"], tmp / "a")
    try:
        wait_for_swarm([a, b])
        deadline = time.monotonic() + 30
        while "bench" not in {m["id"] for m in a.get("/v1/models").json()["data"]}:
            if time.monotonic() > deadline:
                raise RuntimeError("A never learned that B serves the model")
            time.sleep(0.2)
        via = httpx.post(
            a.url + "/v1/completions",
            json={"model": "bench", "prompt": "Hi", "max_tokens": 2},
            timeout=60,
        )
        assert via.headers["x-llamanet-node"] == b.get("/info").json()["node_id"]
        http_run(b.url, args.tokens), http_run(a.url, args.tokens)  # warm-up both paths
        direct: list[Run] = []
        forwarded: list[Run] = []
        for rep in range(args.reps):
            direct.append(http_run(b.url, args.tokens))
            forwarded.append(http_run(a.url, args.tokens))
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    finally:
        a.stop()
        b.stop()

    def med(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    d_ttft, f_ttft = med(direct, "ttft_ms"), med(forwarded, "ttft_ms")
    d_tps, f_tps = med(direct, "tps"), med(forwarded, "tps")
    added = statistics.median(f.ttft_ms - d.ttft_ms for d, f in zip(direct, forwarded, strict=True))
    print(
        f"\ngateway benchmark: {args.reps} interleaved reps, {args.tokens} max tokens, "
        f"{args.threads} threads, temperature 0, medians"
    )
    print(f"{'':16} {'tokens/s':>9} {'TTFT ms':>9}")
    print(f"{'direct to B':16} {d_tps:9.1f} {d_ttft:9.1f}")
    print(f"{'through A':16} {f_tps:9.1f} {f_ttft:9.1f}")
    print(f"\nadded TTFT (median of paired reps) {added:+6.2f} ms   (target <= 3 ms)")
    print(f"tokens/s through A / direct        {f_tps / d_tps:6.3f}   (target >= 0.98)")


if __name__ == "__main__":
    main()
