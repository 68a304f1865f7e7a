"""The cost of grammar-constrained generation: tokens/s of structured output and forced tool
calls against free generation, on one LlamaNet node, all measured in this run.

    python bench/grammar_bench.py [--reps 3] [--tokens 160] [--threads 2]

Each case is a native `/generate` chat request (the same path as the OpenAI routes, without
SSE framing): free text; `response_format` json_object; json_schema (an array of 16 bounded
strings, so the constrained answer is long too); a forced tool call (the generic JSON envelope
with the function's argument schema). Cases interleave per rep after one warm-up each;
medians. `engine tok/s` is the node's own decode rate (first to last token); `wall tok/s` is
completion tokens over the request's wall time after the first token (TTFT subtracted).
The ratio column is against free generation in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "src"))

from _common import free_port  # noqa: E402
from node_bench import start_server  # noqa: E402

from llamanet.node.config import default_home  # noqa: E402
from llamanet.node.model_store import resolve_model  # noqa: E402

ASK = [{"role": "user", "content": "List sixteen fruits and say something about each one."}]
LIST_SCHEMA = {
    "type": "object",
    "properties": {
        "fruits": {
            "type": "array",
            "items": {"type": "string", "minLength": 8, "maxLength": 40},
            "minItems": 16,
            "maxItems": 16,
        }
    },
    "required": ["fruits"],
}
TOOL = {
    "type": "function",
    "function": {
        "name": "record_fruits",
        "parameters": LIST_SCHEMA,
    },
}
CASES: dict[str, dict[str, Any]] = {
    "free text": {},
    "json_object": {
        "response_format": {"type": "json_object"},
        "messages": [  # without a hint the small model often answers "{}"
            {
                "role": "user",
                "content": "Answer with a JSON object that maps sixteen fruits to a sentence "
                "about each one.",
            }
        ],
    },
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "fruits", "schema": LIST_SCHEMA},
        }
    },
    "forced tool call": {"tools": [TOOL], "tool_choice": "required"},
}


@dataclass
class Sample:
    engine_tps: float
    wall_tps: float
    tokens: int


def run(client: httpx.Client, url: str, extra: dict[str, Any], tokens: int, seed: int) -> Sample:
    body = {
        "messages": ASK,  # a case may bring its own
        "max_tokens": tokens,
        "temperature": 0.7,
        "seed": seed,
        **extra,
    }
    start = time.perf_counter()
    res = client.post(url + "/generate", json=body)
    wall = time.perf_counter() - start
    res.raise_for_status()
    out = res.json()
    n = out["usage"]["completion_tokens"]
    decode = wall - out["ttft_ms"] / 1000
    return Sample(out["tokens_per_second"], (n - 1) / decode if n > 1 else float("nan"), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    model = resolve_model(None, default_home() / "models")  # pulled if missing
    tmp = Path(tempfile.mkdtemp(prefix="llamanet-grammar-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "llamanet",
        "node",
        "--model",
        str(model),
        "--model-id",
        "bench",
        "--port",
        str(port),
        "--dht-port",
        "0",
        "--home",
        str(tmp / "node"),
        "--n-threads",
        str(args.threads),
        "--log-level",
        "warning",
    ]
    node = start_server(cmd, url, tmp / "node.log")
    deadline = time.monotonic() + 120
    while httpx.get(url + "/health", timeout=5).status_code != 200:  # the model is loading
        if time.monotonic() > deadline:
            node.kill()
            raise RuntimeError("the node did not load its model in 120 s")
        time.sleep(0.2)
    samples: dict[str, list[Sample]] = {name: [] for name in CASES}
    try:
        with httpx.Client(timeout=600) as client:
            for extra in CASES.values():  # warm-up: first-request costs, grammar caches
                run(client, url, extra, 16, 0)
            for rep in range(args.reps):
                for name, extra in CASES.items():
                    samples[name].append(run(client, url, extra, args.tokens, rep + 1))
                print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    finally:
        node.terminate()
        node.wait(20)

    print(
        f"\ngrammar benchmark: {args.reps} reps, {args.tokens} max tokens, {args.threads} "
        "threads, temperature 0.7, medians"
    )
    print(f"{'':18} {'engine tok/s':>12} {'wall tok/s':>11} {'tokens':>7} {'vs free':>8}")
    free = statistics.median(s.engine_tps for s in samples["free text"])
    for name, runs in samples.items():
        engine = statistics.median(s.engine_tps for s in runs)
        wall = statistics.median(s.wall_tps for s in runs)
        tokens = int(statistics.median(s.tokens for s in runs))
        print(f"{name:18} {engine:12.1f} {wall:11.1f} {tokens:7d} {engine / free:8.3f}")


if __name__ == "__main__":
    main()
