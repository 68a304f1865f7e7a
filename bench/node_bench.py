"""Node speed against its baselines, all measured in this run on the default model.

    python bench/node_bench.py [--reps 3] [--tokens 256] [--threads 2]

(a) raw `llama_cpp.Llama.create_completion(stream=True)` in this process (no HTTP);
(b) the same request streamed from a LlamaNet node over HTTP/SSE;
(c) the same request streamed from the peer `llama_cpp.server` over HTTP/SSE.
One warm-up each, then per rep a, b, c back to back (every other rep in reverse order);
temperature 0, same threads. tokens/s is the decode rate seen by the consumer:
(chunks - 1) / (last chunk - first chunk). The ratios are the medians of each rep's own ratios
(min-max after them): this machine's speed drifts by more than the differences measured, and
runs seconds apart see the same speed. Then 4 concurrent streams against (b) and (c): how many
finish with a finish_reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import (  # noqa: E402
    PROMPT,
    Run,
    free_port,
    http_run,
    llama_cpp_server_command,
    start_server,
    summarise,
    use_node_weights,
)

from llamanet.node.config import default_home  # noqa: E402
from llamanet.node.model_store import resolve_model  # noqa: E402


def raw_run(llm: object, tokens: int) -> Run:
    start = time.perf_counter()
    times = [
        time.perf_counter()
        for chunk in llm.create_completion(  # type: ignore[attr-defined]
            PROMPT, max_tokens=tokens, temperature=0.0, stream=True
        )
        if chunk["choices"][0]["text"]
    ]
    return summarise(start, times)


async def concurrent_streams(base: str, n: int, tokens: int) -> int:
    """How many of n simultaneous streams end with a finish_reason after some text."""

    async def one(client: httpx.AsyncClient, i: int) -> bool:
        body = {"model": "bench", "prompt": f"{i}. {PROMPT}", "max_tokens": tokens, "stream": True}
        text, finish = "", None
        try:
            async with client.stream("POST", base + "/v1/completions", json=body) as res:
                if res.status_code != 200:
                    return False
                async for line in res.aiter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:]).get("choices", []):
                            text += choice.get("text") or ""
                            finish = choice.get("finish_reason") or finish
        except httpx.HTTPError:
            return False
        return bool(text) and finish is not None

    async with httpx.AsyncClient(timeout=300) as client:
        return sum(await asyncio.gather(*(one(client, i) for i in range(n))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()

    model = resolve_model(None, default_home() / "models")  # pulled if missing
    tmp = Path(tempfile.mkdtemp(prefix="llamanet-bench-"))
    node_port, peer_port = free_port(), free_port()
    node_url, peer_url = f"http://127.0.0.1:{node_port}", f"http://127.0.0.1:{peer_port}"
    node = start_server(
        [
            sys.executable,
            "-m",
            "llamanet",
            "node",
            "--model",
            str(model),
            "--model-id",
            "bench",
            "--port",
            str(node_port),
            "--dht-port",
            "0",
            "--home",
            str(tmp / "node"),
            "--n-threads",
            str(args.threads),
            "--n-ctx",
            str(args.n_ctx),
            "--log-level",
            "warning",
        ],
        node_url,
        tmp / "node.log",
    )
    peer = start_server(
        [
            *llama_cpp_server_command(sys.executable, model),
            "--model",
            str(model),
            "--model_alias",
            "bench",
            "--port",
            str(peer_port),
            "--n_threads",
            str(args.threads),
            "--n_ctx",
            str(args.n_ctx),
            "--verbose",
            "False",
        ],
        peer_url,
        tmp / "peer.log",
    )
    try:
        from llama_cpp import Llama

        use_node_weights(model)
        llm = Llama(model_path=str(model), n_ctx=args.n_ctx, n_threads=args.threads, verbose=False)
        runners = {
            "a raw llama_cpp": lambda: raw_run(llm, args.tokens),
            "b llamanet node": lambda: http_run(node_url, args.tokens),
            "c llama_cpp.server": lambda: http_run(peer_url, args.tokens),
        }
        for run in runners.values():  # warm-up (page cache, first-request costs)
            run()
        results: dict[str, list[Run]] = {name: [] for name in runners}
        for rep in range(args.reps):
            order = list(runners.items())
            for name, run in order if rep % 2 == 0 else reversed(order):
                results[name].append(run())
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
        llm.close()
        conc = {
            "b llamanet node": asyncio.run(concurrent_streams(node_url, 4, 64)),
            "c llama_cpp.server": asyncio.run(concurrent_streams(peer_url, 4, 64)),
        }
    finally:
        for proc in (node, peer):
            proc.terminate()
            proc.wait(20)

    med = {
        name: Run(
            statistics.median(r.ttft_ms for r in runs),
            statistics.median(r.tps for r in runs),
            int(statistics.median(r.chunks for r in runs)),
        )
        for name, runs in results.items()
    }
    print(
        f"\nnode benchmark: {args.reps} reps, {args.tokens} max tokens, {args.threads} threads,"
        " temperature 0, medians"
    )
    print(f"{'':22} {'tokens/s':>9} {'TTFT ms':>9} {'chunks':>7}")
    for name, m in med.items():
        print(f"{name:22} {m.tps:9.1f} {m.ttft_ms:9.1f} {m.chunks:7d}")
    a, b, c = results.values()

    def paired(label: str, xs: list[Run], ys: list[Run], target: str) -> None:
        ratios = [x.tps / y.tps for x, y in zip(xs, ys, strict=True)]
        print(
            f"{label} tokens/s  {statistics.median(ratios):6.3f}   ({min(ratios):.3f}-"
            f"{max(ratios):.3f}){target}"
        )

    def ttft_gap(label: str, xs: list[Run], ys: list[Run], target: str) -> None:
        gaps = [x.ttft_ms - y.ttft_ms for x, y in zip(xs, ys, strict=True)]
        print(f"TTFT {label}    {statistics.median(gaps):+6.1f} ms{target}")

    print("\nper-rep ratios, median (min-max):")
    paired("b/a", b, a, "   target >= 0.97")
    paired("b/c", b, c, "   target >= 1.10")
    paired("c/a", c, a, "")
    ttft_gap("b - a", b, a, " (target <= 5 ms)")
    ttft_gap("b - c", b, c, "")
    print("\n4 concurrent streams, completed with a finish_reason:")
    for name, n in conc.items():
        print(f"  {name:22} {n}/4")
    peer_log = (tmp / "peer.log").read_text(errors="replace")
    if re.search(r"Traceback", peer_log):
        print("  (the peer logged tracebacks; see", tmp / "peer.log", ")")


if __name__ == "__main__":
    main()
