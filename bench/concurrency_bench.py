"""Concurrent streaming chats against one server: a LlamaNet node, llama_cpp.server, llama-server.

    python bench/concurrency_bench.py [--streams 1,2,4,8,16] [--rounds 2] [--max-tokens 128]
        [--threads 2] [--parallel 8] [--node-args "..."] [--servers node,llama_cpp,llama-server]
        [--plot docs/concurrency.png] [--json results.json] [--no-build] [--no-interleave]
    python bench/concurrency_bench.py --report results.json [--plot out.png]

Why: a node is only worth running if it serves many users at once at least as well as llama.cpp's
own server does on the same hardware. For each level N, every server is started (an idle one takes
no CPU; `--no-interleave` starts them once for all levels), gets one warm-up request, then
`--rounds` rounds of one burst per server, the servers' order rotated each round, so that a drift
in the speed of this shared machine (the same burst was 25 % slower a few minutes later here) falls
on all of them alike (with 2 servers, an even number of rounds puts each first equally often); the
ratio table also gives each round's own ratio, whose spread is the noise left. A burst is N
streaming chat completions sent at once: distinct prompts (a ~250-token request whose first words
differ, so only the chat template's system preamble is shared and no prefix cache can serve a burst
from one prefill; `--short-prompts`: ~65 tokens), temperature 0, the same `max_tokens`. Within a
round every server gets the same burst, so each round's ratio compares the same work. On the
2-core machine this was written on, prefill is a real share of each request: llama-server logged
~240 prompt tokens/s against ~90 decode tokens/s at 2 threads, so ~1 s of a single stream's TTFT
is the prompt.
Measured as the client sees it:

- aggregate tokens/s: completion tokens of every stream of the level / the bursts' wall time
  (completion tokens from the stream's `usage` when the server sends one, else its content
  chunks, which is one token per chunk on these servers);
- TTFT p50 / p95: request sent -> first content chunk, over every stream of the level;
- completed (a finish_reason and no error) vs failed (any other status, error event, transport
  error, a stream ending without finish_reason);
- the load average after each level (other work on the machine shows there) and the server
  process's peak RSS.

The servers, all on the default model with the same `--threads` for generation and batches:
(a) `python -m llamanet node --queue-size 16 --n-threads T` plus `--parallel P` when this node
    has that option (the batching engine), plus `--node-args`;
(b) `python -m llama_cpp.server` (the `[server]` extra; one request at a time, with
    `--interrupt_requests False` so a new request queues instead of cutting the running stream);
(c) llama-server `-np P -t T -tb T -c P*n_ctx` (each slot gets `--n-ctx`), built by
    bench/_llama_server.py from the llama.cpp inside the pinned llama-cpp-python sdist; when it
    is not built and cannot be, the bench says so and compares the rest.
Prints one table per server, the ratios node/llama-server and node/llama_cpp.server, and writes
a PNG (throughput and TTFT vs streams).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import (  # noqa: E402
    free_port,
    llama_cpp_server_command,
    llama_server_weight_args,
    start_server,
)
from _llama_server import LlamaServerUnavailable, ensure_llama_server  # noqa: E402
from load_test import RssSampler  # noqa: E402

from llamanet.cli.launcher import launch_node  # noqa: E402
from llamanet.node.config import default_home  # noqa: E402
from llamanet.node.model_store import resolve_model  # noqa: E402

NODE, LLAMA_CPP, LLAMA_SERVER = "node", "llama_cpp", "llama-server"
LABELS = {
    NODE: "LlamaNet node",
    LLAMA_CPP: "llama_cpp.server",
    LLAMA_SERVER: "llama-server",
}

TOPICS = (
    "a lighthouse keeper who finds a message in a bottle",
    "a bakery that only opens at midnight",
    "a robot learning to paint landscapes",
    "two rival chess players stuck on a train",
    "a city where it has not rained for ten years",
    "a librarian who can hear books whisper",
    "the first gardener on Mars",
    "a detective who is afraid of the dark",
    "a village that forgets one word every day",
    "a submarine crew hearing music from the deep",
    "a violin maker and her stubborn apprentice",
    "a cat that becomes mayor of a small town",
    "a map that redraws itself every night",
    "an old clock repairer who can pause time",
    "a beekeeper during the hottest summer on record",
    "a mountain rescue team caught in a blizzard",
    "a chef cooking for a king who tastes nothing",
    "a child who builds a kite that never comes down",
)

BRIEF = (
    "I am putting together a small anthology of short fiction for a reading group. Each "
    "story should be self-contained, written in clear and vivid English, and suitable for "
    "adult readers who enjoy quiet, character-driven writing rather than action. Please "
    "avoid lists, headings and summaries: I want continuous prose with concrete details "
    "(what the characters see, hear and touch), a little dialogue, and an ending that "
    "resolves the situation without a twist for its own sake. Keep the names simple and "
    "the setting consistent. The group meets on Thursday evenings and reads each story "
    "aloud, so the rhythm of the sentences matters: vary their length, and let the first "
    "paragraph set the scene slowly before anything happens. Earlier stories in the "
    "collection were about a ferryman, a glassblower and a night-shift nurse, so the tone "
    "should be warm, observant and a little melancholic, like those."
)


def chat_messages(index: int, short: bool = False) -> list[dict[str, str]]:
    """A distinct request (~250 prompt tokens with the chat template, ~65 when `short`); its
    first words differ from every other request's."""
    topic = TOPICS[index % len(TOPICS)]
    brief = "" if short else f" {BRIEF}"
    return [
        {
            "role": "user",
            "content": f"Story {index + 1}, about {topic}.{brief} Now write the story about "
            f"{topic}, starting with a long opening paragraph.",
        }
    ]


@dataclass
class Stream:
    """One streamed chat completion as its client saw it."""

    completed: bool
    tokens: int
    ttft_ms: float | None
    detail: str = ""


@dataclass
class Level:
    """Every burst of `streams` concurrent requests sent to one server."""

    streams: int
    results: list[Stream] = field(default_factory=list)
    wall_s: float = 0.0
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    burst_tps: list[float] = field(default_factory=list)  # each burst's own tokens/s: the noise

    @property
    def completed(self) -> int:
        return sum(r.completed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.completed

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def ttft(self, q: float) -> float:
        """Nearest-rank percentile of the time to first token, in ms."""
        values = sorted(r.ttft_ms for r in self.results if r.ttft_ms is not None)
        if not values:
            return float("nan")
        return values[max(0, math.ceil(q * len(values)) - 1)]


@dataclass
class ServerRun:
    name: str
    command: str = ""
    levels: list[Level] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    error: str = ""

    def level(self, streams: int) -> Level | None:
        return next((lv for lv in self.levels if lv.streams == streams), None)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServerRun:
        """The inverse of `asdict` (the `--json` file)."""
        levels = [
            Level(
                lv["streams"],
                [Stream(**r) for r in lv["results"]],
                lv["wall_s"],
                tuple(lv["loadavg"]),
                lv.get("burst_tps", []),
            )
            for lv in raw["levels"]
        ]
        return cls(raw["name"], raw["command"], levels, raw["peak_rss_mib"], raw["error"])


async def one_stream(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Stream:
    """Streams one chat completion and classifies it."""
    started = time.perf_counter()
    ttft: float | None = None
    chunks, usage_tokens, finish = 0, None, None
    try:
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as res:
            if res.status_code != 200:
                await res.aread()
                return Stream(False, 0, None, f"status {res.status_code}")
            async for line in res.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Stream(False, chunks, ttft, "error event")
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    if choice.get("delta", {}).get("content"):
                        chunks += 1
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:
        return Stream(False, chunks, ttft, type(exc).__name__)
    tokens = usage_tokens if isinstance(usage_tokens, int) else chunks
    if finish is None:
        return Stream(False, tokens, ttft, "no finish_reason")
    return Stream(True, tokens, ttft)


class Requests:
    """Hands out request bodies; no prompt is handed out twice in one run."""

    def __init__(self, max_tokens: int, short: bool = False) -> None:
        self.max_tokens, self.short, self.next = max_tokens, short, 0

    def take(self, n: int) -> list[dict[str, Any]]:
        first, self.next = self.next, self.next + n
        return [
            {
                "model": "bench",
                "messages": chat_messages(index, self.short),
                "max_tokens": self.max_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            for index in range(first, first + n)
        ]


async def burst(url: str, bodies: list[dict[str, Any]]) -> tuple[list[Stream], float]:
    """The requests sent at once; their outcomes and the wall time until the last one ended."""
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(900, connect=10)) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(http, url, body) for body in bodies))
        return list(results), time.perf_counter() - started


def drop(run: ServerRun, why: str | Exception) -> None:
    """Takes a failed server out of the comparison, saying why."""
    run.error = f"{type(why).__name__}: {str(why)[:400]}" if isinstance(why, Exception) else why
    say(f"  {LABELS[run.name]} failed: {run.error}")


def measure(
    runs: dict[str, ServerRun],
    servers: dict[str, tuple[str, int]],
    levels: list[int],
    rounds: int,
    requests: Requests,
) -> None:
    """Warm-up of each server, then every level's bursts, alternating between the servers.

    Round r sends the same burst (the same prompts) to each running server, in an order rotated
    by r: a drift in the speed of this shared machine (seen here: the same burst 25 % slower a
    few minutes later) then falls on every server alike instead of on whichever ran in the slow
    minutes, and every server does the same work (with a prompt set of its own, a server whose
    answers happened to end early at EOS looked faster). Each server still sees each prompt
    once: none finds it in its prefix cache. A server that fails leaves the comparison; the
    others go on."""
    live = dict(servers)
    warm_up = requests.take(1)
    for name, (url, _) in list(live.items()):
        warm, _ = asyncio.run(burst(url, warm_up))
        if not warm[0].completed:
            drop(runs[name], f"the warm-up request failed: {warm[0].detail}")
            del live[name]
    with RssSampler({name: pid for name, (_, pid) in live.items()}) as rss:
        for n in levels:
            level = {name: Level(n) for name in live}
            for r in range(rounds):
                names, bodies = list(live), requests.take(n)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    try:
                        results, wall = asyncio.run(burst(live[name][0], bodies))
                    except Exception as exc:  # one broken server must not hide the others
                        drop(runs[name], exc)
                        del live[name]
                        continue
                    lv = level[name]
                    lv.results += results
                    lv.wall_s += wall
                    lv.burst_tps.append(sum(x.tokens for x in results) / wall)
                if not live:
                    return
            for name in live:
                lv = level[name]
                lv.loadavg = os.getloadavg()
                runs[name].levels.append(lv)
                say(
                    f"  {LABELS[name]:17} {n:3d} streams: {lv.tps:6.1f} tok/s, TTFT p50 "
                    f"{lv.ttft(0.5):6.0f} ms, {lv.completed}/{len(lv.results)} completed, "
                    f"load {lv.loadavg[0]:.2f}"
                )
    for name in servers:
        if name in rss.peak:
            runs[name].peak_rss_mib = max(runs[name].peak_rss_mib, rss.peak[name] / 1024)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def node_has_option(option: str) -> bool:
    """Whether `llamanet node` (the one this interpreter imports) offers `option`."""
    done = subprocess.run(
        [sys.executable, "-m", "llamanet", "node", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    return option in done.stdout


@contextlib.contextmanager
def node_server(args: list[str], home: Path) -> Iterator[tuple[str, int]]:
    node = launch_node(args, home)
    try:
        status = node.status()
        say(f"  node up: capacity {status['capacity']}, queue size {status['queue_size']}")
        yield node.url, node.proc.pid
    finally:
        node.stop()


@contextlib.contextmanager
def process_server(
    command: Callable[[int], list[str]], log: Path, ready: str
) -> Iterator[tuple[str, int]]:
    """Starts `command(free port)` and stops it afterwards (SIGTERM, SIGKILL if it hangs)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(command(port), url, log, ready_path=ready)
    try:
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "     - "


def print_tables(runs: list[ServerRun], levels: list[int], out: Callable[[str], None]) -> None:
    for run in runs:
        out(f"\n{LABELS[run.name]}: {run.command}")
        if run.error:
            out(f"  not measured: {run.error}")
            continue
        out(
            f"  {'streams':>7} {'tok/s':>7} {'bursts min..max':>15} {'TTFT p50':>9} "
            f"{'TTFT p95':>9} {'done':>5} {'failed':>6} {'tok/stream':>10} {'load 1m':>8}"
        )
        for lv in run.levels:
            spread = f"{min(lv.burst_tps):.1f}..{max(lv.burst_tps):.1f}" if lv.burst_tps else "-"
            out(
                f"  {lv.streams:7d} {lv.tps:7.1f} {spread:>15} {lv.ttft(0.5):9.0f} "
                f"{lv.ttft(0.95):9.0f} {lv.completed:5d} {lv.failed:6d} "
                f"{lv.tokens / max(1, len(lv.results)):10.1f} {lv.loadavg[0]:8.2f}"
            )
        out(f"  peak RSS {run.peak_rss_mib:.0f} MiB")
    by_name = {run.name: run for run in runs if not run.error}
    node = by_name.get(NODE)
    for other in (LLAMA_SERVER, LLAMA_CPP):
        if node is None or other not in by_name:
            continue
        out(f"\nratios node / {LABELS[other]} (tok/s: higher is better; TTFT: lower is better)")
        out(
            f"  {'streams':>7} {'tok/s':>8} {'rounds min..max':>16} {'TTFT p50':>9} {'TTFT p95':>9}"
        )
        for n in levels:
            a, b = node.level(n), by_name[other].level(n)
            if a is None or b is None:
                continue
            paired = [x / y for x, y in zip(a.burst_tps, b.burst_tps, strict=False) if y > 0]
            spread = f"{min(paired):.2f}..{max(paired):.2f}x" if paired else "-"
            out(
                f"  {n:7d} {fmt_ratio(a.tps, b.tps):>8} {spread:>16} "
                f"{fmt_ratio(a.ttft(0.5), b.ttft(0.5)):>9} "
                f"{fmt_ratio(a.ttft(0.95), b.ttft(0.95)):>9}"
            )


def plot(runs: list[ServerRun], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        if run.error or not run.levels:
            continue
        xs = [lv.streams for lv in run.levels]
        (line,) = left.plot(xs, [lv.tps for lv in run.levels], marker="o", label=LABELS[run.name])
        right.plot(xs, [lv.ttft(0.5) for lv in run.levels], marker="o", color=line.get_color())
        right.plot(
            xs, [lv.ttft(0.95) for lv in run.levels], ls="--", color=line.get_color(), alpha=0.6
        )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({lv.streams for run in runs for lv in run.levels}) or [1])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent streams")
        ax.grid(alpha=0.3)
    left.set_ylabel("aggregate completion tokens/s")
    left.set_ylim(bottom=0)
    left.legend()
    right.set_ylabel("time to first token, ms (solid p50, dashed p95)")
    right.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,2,4,8,16", help="concurrency levels, comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="bursts per level")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument(
        "--short-prompts",
        action="store_true",
        help="~65-token prompts instead of ~250 (decode dominates; prefill matters less)",
    )
    ap.add_argument("--threads", type=int, default=2, help="threads of every server")
    ap.add_argument("--parallel", type=int, default=8, help="slots (llama-server -np, node)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--queue-size", type=int, default=16, help="the node's --queue-size")
    ap.add_argument("--node-args", default="", help="extra arguments for `llamanet node`")
    ap.add_argument("--servers", default=f"{NODE},{LLAMA_CPP},{LLAMA_SERVER}")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "concurrency.png")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--no-build", action="store_true", help="skip llama-server if not built")
    ap.add_argument(
        "--no-interleave",
        dest="interleave",
        action="store_false",
        help="run every level on one start of the servers (default: restarted for each level)",
    )
    ap.add_argument(
        "--report", type=Path, help="measure nothing: print the tables and plot of a --json file"
    )
    args = ap.parse_args()

    if args.report:
        raw = json.loads(args.report.read_text())
        saved = [ServerRun.from_dict(r) for r in raw["runs"]]
        print(raw["title"])
        print_tables(saved, sorted({lv.streams for r in saved for lv in r.levels}), print)
        plot(saved, args.plot, raw["title"])
        print(f"\nplot: {args.plot}")
        return

    levels = [int(n) for n in args.streams.split(",")]
    servers = [s.strip() for s in args.servers.split(",")]
    unknown = set(servers) - set(LABELS)
    if unknown:
        ap.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(LABELS)}")
    model = resolve_model(None, default_home() / "models")  # pulled if missing
    tmp = Path(tempfile.mkdtemp(prefix="llamanet-concurrency-"))
    t = str(args.threads)
    start_load = os.getloadavg()
    say(
        f"concurrency bench: {model.name}, streams {levels} x {args.rounds} rounds, "
        f"max_tokens {args.max_tokens}, temperature 0, {args.threads} threads, "
        f"load average at start {start_load[0]:.2f} {start_load[1]:.2f} {start_load[2]:.2f}"
    )

    # name -> (the command, shown; a launcher taking a tag that names this start's log/home)
    launchers: dict[str, tuple[str, Callable[[str], contextlib.AbstractContextManager[Any]]]] = {}
    if NODE in servers:
        parallel = ["--parallel", str(args.parallel)] if node_has_option("--parallel") else []
        node_args = [
            *("--model", str(model), "--model-id", "bench", "--n-threads", t),
            *("--n-ctx", str(args.n_ctx), "--queue-size", str(args.queue_size)),
            *("--log-level", "warning", *parallel, *shlex.split(args.node_args)),
        ]
        launchers[NODE] = (
            "llamanet node " + shlex.join(node_args[2:]),
            lambda tag: node_server(node_args, tmp / tag),
        )
    if LLAMA_CPP in servers:
        cpp_args = [
            *("--model_alias", "bench", "--n_threads", t, "--n_threads_batch", t),
            *("--n_ctx", str(args.n_ctx), "--verbose", "False", "--interrupt_requests", "False"),
        ]
        launchers[LLAMA_CPP] = (
            shlex.join(["python", "-m", "llama_cpp.server", *cpp_args]),
            lambda tag: process_server(
                lambda port: [
                    *llama_cpp_server_command(sys.executable, model),
                    *("--model", str(model)),
                    *("--port", str(port), *cpp_args),
                ],
                tmp / f"{tag}.log",
                "/v1/models",
            ),
        )
    runs = {name: ServerRun(name, command=command) for name, (command, _) in launchers.items()}
    if LLAMA_SERVER in servers:
        try:
            binary = ensure_llama_server(build=not args.no_build, jobs=args.threads)
        except LlamaServerUnavailable as exc:
            runs[LLAMA_SERVER] = ServerRun(LLAMA_SERVER, error=str(exc))
            say(f"llama-server: {exc}; comparing the rest")
        else:
            ls_args = [
                *("-a", "bench", "-np", str(args.parallel), "-t", t, "-tb", t),
                *("-c", str(args.parallel * args.n_ctx), "--no-webui"),
                *llama_server_weight_args(model),
            ]
            launchers[LLAMA_SERVER] = (
                shlex.join(["llama-server", *ls_args]),
                lambda tag: process_server(
                    lambda port: [
                        *(str(binary), "-m", str(model), "--host", "127.0.0.1"),
                        *("--port", str(port), *ls_args),
                    ],
                    tmp / f"{tag}.log",
                    "/health",
                ),
            )
            runs[LLAMA_SERVER] = ServerRun(LLAMA_SERVER, command=launchers[LLAMA_SERVER][0])

    # every server up at once (an idle one takes no CPU), the bursts alternating between them;
    # by default restarted for each level, so no level inherits another's cache or fragmentation
    passes = [[n] for n in levels] if args.interleave else [levels]
    requests = Requests(args.max_tokens, args.short_prompts)
    for name, (command, _) in launchers.items():
        say(f"{LABELS[name]}: {command}")
    for number, pass_levels in enumerate(passes):
        with contextlib.ExitStack() as stack:
            up: dict[str, tuple[str, int]] = {}
            for name, (_, launcher) in launchers.items():
                if runs[name].error:
                    continue
                try:
                    up[name] = stack.enter_context(launcher(f"{name}-{number}"))
                except Exception as exc:  # one broken server must not hide the others' numbers
                    drop(runs[name], exc)
            if up:
                measure(runs, up, pass_levels, args.rounds, requests)
    ordered = sorted(runs.values(), key=lambda r: list(LABELS).index(r.name))

    end_load = os.getloadavg()
    print(
        f"\nconcurrency bench: {model.name}, {args.max_tokens} max tokens, temperature 0, "
        f"{args.threads} threads each, {args.rounds} bursts per level, distinct "
        f"{'~65' if args.short_prompts else '~250'}-token prompts"
    )
    print(
        f"load average (1/5/15 min): start {start_load[0]:.2f} {start_load[1]:.2f} "
        f"{start_load[2]:.2f}, end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    loads = [start_load[0], *(lv.loadavg[0] for r in ordered for lv in r.levels)]
    busy = max(loads)
    if busy > (os.cpu_count() or 1):
        print(
            f"the machine was busy (1-min load up to {busy:.1f}): llama.cpp threads that wait for "
            "each other at every step slow down far more than the load suggests when other "
            "processes take their cores; compare ratios measured at the same load only"
        )
    print_tables(ordered, levels, print)
    title = (
        f"{model.name}, {args.max_tokens} tokens, temperature 0, {args.threads} threads, "
        f"{os.cpu_count()} cores; 1-min load average {min(loads):.1f}..{busy:.1f}"
    )
    if any(r.levels for r in ordered):
        plot(ordered, args.plot, title)
        print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"title": title, "runs": [asdict(r) for r in ordered]}, indent=1, default=str
            )
        )
        print(f"raw results: {args.json}")
    print(f"server logs: {tmp}")
    sys.exit(0 if all(not r.error for r in ordered) else 1)


if __name__ == "__main__":
    main()
