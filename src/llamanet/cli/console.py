"""Terminal front-ends of the swarm: the demo swarm, interactive chat, and the swarm table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from llamanet.cli.launcher import NodeProcess, launch_node, spawn_node, wait_for_swarm, wait_healthy
from llamanet.client import LlamaNetClient, LlamaNetError, NoNodeAvailable
from llamanet.protocol import NodeRecord

DEMO_QUESTION = "In two sentences, what is a decentralized network?"


def client_for(
    url: str | None,
    bootstrap: str | None,
    model: str | None = None,
) -> LlamaNetClient:
    nodes = [url] if url else []
    peers = [p for p in (bootstrap or "").split(",") if p]
    if not nodes and not peers:
        nodes = ["http://127.0.0.1:8000"]
    return LlamaNetClient(nodes=nodes, bootstrap=peers, model=model)


# ---------------------------------------------------------------------- status table


def swarm_table(records: Sequence[NodeRecord], title: str = "LlamaNet swarm") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("node", "url", "models", "load", "queue", "tok/s", "ttft ms", "last seen"):
        table.add_column(
            column, justify="right" if column in ("load", "queue", "tok/s", "ttft ms") else "left"
        )
    now = time.time()
    for r in sorted(records, key=lambda r: r.url):
        table.add_row(
            r.node_id[:12],
            r.url,
            ", ".join(m.id for m in r.models) or "(gateway)",
            f"{r.load:.0%}",
            f"{r.active}+{r.queued}/{r.capacity}",
            f"{r.tokens_per_second:.1f}",
            f"{r.ttft_ms:.0f}",
            f"{max(0, now - r.issued_at):.0f}s ago",
        )
    return table


def records_json(records: Sequence[NodeRecord]) -> str:
    return json.dumps(
        [r.model_dump(exclude={"signature", "public_key"}) for r in records], indent=2
    )


async def fetch_records(url: str | None, bootstrap: str | None) -> list[NodeRecord]:
    """The live records, or `NoNodeAvailable` when discovery reached nobody."""
    async with client_for(url, bootstrap) as client:
        records = await client.nodes()
        if not records:
            raise NoNodeAvailable(f"no live node found through {client.sources()}")
        return records


async def monitor(
    url: str | None,
    bootstrap: str | None,
    interval: float,
    console: Console,
    *,
    updates: int | None = None,
) -> None:
    """The swarm table every `interval` seconds (`updates` times, or until cancelled): redrawn in
    place on a terminal; into a pipe or file one table after another, since a `Live` display
    there prints nothing until it stops."""
    async with client_for(url, bootstrap) as client:
        live = Live(swarm_table([]), console=console, refresh_per_second=4)
        with live if console.is_terminal else contextlib.nullcontext():
            shown = 0
            while updates is None or shown < updates:
                if shown:
                    await asyncio.sleep(interval)
                await client.refresh()
                title = f"LlamaNet swarm — {time.strftime('%H:%M:%S')}"
                table = swarm_table(await client.nodes(), title)
                if console.is_terminal:
                    live.update(table)
                else:
                    console.print(table)
                shown += 1


# ---------------------------------------------------------------------- chat


async def stream_answer(
    client: LlamaNetClient,
    messages: list[dict[str, str]],
    out: Console,
    *,
    max_tokens: int = 256,
    temperature: float = 0.7,
) -> str:
    """Prints an answer token by token; returns its text."""
    text, node, usage = "", "", None
    async for chunk in client.chat_stream(messages, max_tokens=max_tokens, temperature=temperature):
        out.print(chunk.text, end="", markup=False, highlight=False, soft_wrap=True)
        text += chunk.text
        node, usage = chunk.node_id, chunk.usage or usage
    tokens = f", {usage.completion_tokens} tokens" if usage else ""
    out.print(f"\n[dim](node {node[:12]}{tokens})[/dim]")
    return text


async def interactive_chat(
    client: LlamaNetClient, out: Console, *, max_tokens: int, temperature: float
) -> None:
    """A chat loop: history kept, `/exit` leaves, Ctrl-C stops the current answer only."""
    history: list[dict[str, str]] = []
    loop = asyncio.get_running_loop()
    out.print(
        "[bold]LlamaNet chat[/bold] — /exit to leave, /reset to forget, Ctrl-C stops an answer"
    )
    async with client:
        while True:
            try:
                line = await loop.run_in_executor(None, input, "you> ")
            except (EOFError, KeyboardInterrupt):
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                history.clear()
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            answer = asyncio.ensure_future(
                stream_answer(client, history, out, max_tokens=max_tokens, temperature=temperature)
            )
            loop.add_signal_handler(signal.SIGINT, answer.cancel)
            try:
                history.append({"role": "assistant", "content": await answer})
            except asyncio.CancelledError:
                out.print("\n[yellow](stopped)[/yellow]")
                history.pop()
            except LlamaNetError as exc:
                out.print(f"\n[red]error:[/red] {exc}")
                history.pop()
            finally:
                loop.remove_signal_handler(signal.SIGINT)


# ---------------------------------------------------------------------- demo


def start_demo_swarm(
    model: Path, count: int, home: Path, out: Console, extra: Sequence[str] = ()
) -> list[NodeProcess]:
    """Starts `count` nodes on free loopback ports, each joining through the first."""
    nodes: list[NodeProcess] = []
    try:
        with out.status("starting node 1 ..."):
            first = launch_node(["--model", str(model), *extra], home / "node-1")
        nodes.append(first)
        out.print(f"  node 1 up at {first.url} (DHT udp {first.dht_port})")
        with out.status(f"starting nodes 2..{count} ..."):
            rest = [
                spawn_node(
                    ["--model", str(model), "--bootstrap", first.bootstrap, *extra],
                    home / f"node-{i}",
                )
                for i in range(2, count + 1)
            ]
            nodes.extend(rest)
            for i, node in enumerate(rest, start=2):
                wait_healthy(node)
                out.print(f"  node {i} up at {node.url} (DHT udp {node.dht_port})")
        with out.status("waiting until every node has discovered every other ..."):
            wait_for_swarm(nodes)
        out.print(f"  all {count} nodes discovered each other through the DHT")
        return nodes
    except BaseException:
        stop_all(nodes)
        raise


def stop_all(nodes: Sequence[NodeProcess]) -> None:
    for node in nodes:
        with contextlib.suppress(Exception):
            node.proc.terminate()
    for node in nodes:
        node.stop()


def run_demo(
    model: Path,
    count: int,
    once: bool,
    home: Path | None,
    out: Console,
    question: str = DEMO_QUESTION,
    max_tokens: int = 128,
) -> int:
    base = home or Path(tempfile.mkdtemp(prefix="llamanet-demo-"))
    out.print(f"[bold]LlamaNet demo[/bold]: a {count}-node swarm on {model.name}")
    # the nodes share this machine: split its cores so they never oversubscribe it
    threads = str(max(1, (os.cpu_count() or 1) // count))
    for sig in (signal.SIGTERM, signal.SIGHUP):  # `kill`, a closed terminal: stop like Ctrl-C
        signal.signal(sig, _interrupt)
    nodes = start_demo_swarm(model, count, base, out, ["--n-threads", threads])
    try:
        out.print(f"\n[bold]you>[/bold] {question}\n[bold]swarm>[/bold] ", end="")

        async def ask() -> None:
            async with LlamaNetClient(nodes=[n.url for n in nodes]) as client:
                await stream_answer(
                    client,
                    [{"role": "user", "content": question}],
                    out,
                    max_tokens=max_tokens,
                    temperature=0.7,
                )

        asyncio.run(ask())
        first = nodes[0].url
        out.print(f"\nweb UI:          {first}/")
        out.print(
            f"OpenAI base URL: {first}/v1   (any node: " + ", ".join(n.url for n in nodes[1:]) + ")"
        )
        out.print(f"DHT bootstrap:   {nodes[0].bootstrap}")
        out.print(f"node logs:       {base}/node-*/node.log")
        if once:
            return 0
        out.print(
            "\nthe swarm is running — try `llamanet chat --url "
            f"{first}` or `llamanet monitor --url {first}`; Ctrl-C stops it"
        )
        with contextlib.suppress(KeyboardInterrupt):
            while all(n.alive() for n in nodes):
                time.sleep(0.5)
            out.print("[red]a node exited; stopping the demo[/red]")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the cleanup
            signal.signal(sig, signal.SIG_IGN)
        with out.status("stopping the swarm ..."):
            stop_all(nodes)
        out.print("swarm stopped")


def _interrupt(signum: int, frame: object) -> None:
    """A SIGTERM or SIGHUP to the demo ends it as Ctrl-C does: without this the demo died at
    once and left its node processes running."""
    raise KeyboardInterrupt
