"""The `llamanet` command line: run a node, pull the default model, and (see below) more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from llamanet._version import __version__
from llamanet.node.config import NodeSettings, default_home

app = typer.Typer(
    help="LlamaNet: a decentralized inference swarm for GGUF models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def setup_logging(level: str = "info") -> None:
    """Rich output on a terminal; plain, greppable lines in a log file or a pipe."""
    if console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, rich_tracebacks=True
        )
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        level=level.upper(), format=fmt, datefmt="%H:%M:%S", handlers=[handler], force=True
    )
    for noisy in ("uvicorn.access", "kademlia", "rpcudp", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("llamanet.ready").setLevel(logging.INFO)


def progress_bar() -> tuple[Progress, Any]:
    """A rich progress bar and the `(stage, done, total)` callback that drives it."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return bar, update


def _env(name: str) -> str:
    return f"LLAMANET_{name.upper()}"


@app.command()
def pull(
    home: Annotated[
        Path | None,
        typer.Option(
            help="LlamaNet home (default ~/.llamanet).", envvar="LLAMANET_HOME", show_envvar=True
        ),
    ] = None,
) -> None:
    """Fetch the default model (SmolLM2-135M-Instruct Q4_1) from PyPI into the models folder."""
    from llamanet.node.model_store import ModelError, pull_default_model

    setup_logging()
    models_dir = (home or default_home()) / "models"
    bar, update = progress_bar()
    try:
        with bar:
            path = pull_default_model(models_dir, update)
    except ModelError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    typer.echo(str(path))


def bind_socket(host: str, port: int) -> socket.socket:
    """Binds the HTTP socket up front so `--port 0` can log (and publish) the real port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP (not 0): asyncio only disables Nagle (TCP_NODELAY) on accepted
    # sockets whose proto says TCP; without it every keep-alive response waits ~40 ms for a
    # delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


SHUTDOWN_GRACE = 5  # seconds uvicorn waits for open requests at a shutdown
DRAIN_GRACE = SHUTDOWN_GRACE - 1.0  # generations may use this much, then they are ended (the
# last second is for their error events to go out)


def serve_node(settings: NodeSettings, sock: socket.socket) -> None:
    """Runs one node on the bound `sock` until Ctrl-C / SIGTERM (uvicorn handles both and
    shuts down cleanly)."""
    import uvicorn

    from llamanet.node.app import create_app
    from llamanet.node.node import LlamaNetNode

    settings.port = sock.getsockname()[1]
    node = LlamaNetNode(settings)

    class NodeServer(uvicorn.Server):
        """uvicorn's server; its shutdown first drains the node (`LlamaNetNode.drain`), so the
        requests still generating when uvicorn stops waiting end with an error, not a cut."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            drain = asyncio.create_task(node.drain(DRAIN_GRACE))
            try:
                await super().shutdown(sockets)
            finally:
                drain.cancel()

    log = logging.getLogger("llamanet.ready")
    log.info(
        "node %s listening on http://%s:%d (OpenAI base URL http://%s:%d/v1)",
        node.node_id[:12],
        settings.host,
        settings.port,
        settings.host,
        settings.port,
    )
    config = uvicorn.Config(
        create_app(node),
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        access_log=False,
        http="h11",  # h11 refuses a request head over 16 KiB; httptools buffers it without limit
    )
    server = NodeServer(config)
    try:
        server.run(sockets=[sock])  # on uvloop when installed (uvicorn[standard])
    except KeyboardInterrupt:
        pass
    log.info("node %s stopped", node.node_id[:12])


def _option(help_text: str, env: str) -> Any:
    """An option that also reads `LLAMANET_<ENV>` (shown in --help)."""
    return typer.Option(help=help_text, envvar=_env(env), show_envvar=True, show_default=False)


@app.command()
def node(
    model: Annotated[
        Path | None,
        _option("GGUF model file (default: the bundled SmolLM2, pulled if missing).", "model"),
    ] = None,
    model_id: Annotated[
        str | None,
        _option("Id the model is served under (default: file name without .gguf).", "model_id"),
    ] = None,
    host: Annotated[str | None, _option("HTTP host to bind (default 127.0.0.1).", "host")] = None,
    port: Annotated[
        int | None, _option("HTTP port (default 8000; 0 picks a free one).", "port")
    ] = None,
    public_url: Annotated[
        str | None, _option("URL peers should use to reach this node.", "public_url")
    ] = None,
    n_ctx: Annotated[
        int | None,
        _option(
            "Context length per slot in tokens (default 2048); the KV cache holds parallel x "
            "n_ctx tokens.",
            "n_ctx",
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        _option(
            "Requests generated together in one batch (slots; default 16, fewer when their KV "
            "cache would take over a quarter of the free memory).",
            "parallel",
        ),
    ] = None,
    n_gpu_layers: Annotated[
        int | None,
        _option(
            "Layers offloaded to the GPU (-1 all; default all when llama-cpp-python was built "
            "with a GPU backend, else 0).",
            "n_gpu_layers",
        ),
    ] = None,
    n_threads: Annotated[
        int | None, _option("CPU threads for generation (default: all).", "n_threads")
    ] = None,
    queue_size: Annotated[
        int | None,
        _option(
            "Requests that may wait for a free slot (default 8); beyond it: 503 or a peer.",
            "queue_size",
        ),
    ] = None,
    dht_port: Annotated[
        int | None, _option("DHT UDP port (default 8001; 0 picks a free one).", "dht_port")
    ] = None,
    bootstrap: Annotated[
        str | None, _option("DHT peers to join, host:port[,host:port].", "bootstrap")
    ] = None,
    heartbeat: Annotated[
        float | None, _option("Seconds between DHT record refreshes (default 10).", "heartbeat")
    ] = None,
    home: Annotated[
        Path | None, _option("Home for the node key and models (default ~/.llamanet).", "home")
    ] = None,
    forward: Annotated[
        bool | None,
        typer.Option(
            "--forward/--no-forward",
            help="Forward requests this node cannot serve to peers.",
            envvar="LLAMANET_FORWARD",
            show_envvar=True,
            show_default=False,
        ),
    ] = None,
    no_model: Annotated[
        bool | None,
        typer.Option(
            "--no-model",
            help="Hold no model: only route requests into the swarm.",
            envvar="LLAMANET_NO_MODEL",
            show_envvar=True,
            show_default=False,
        ),
    ] = None,
    embeddings: Annotated[
        bool | None,
        typer.Option(
            "--embeddings/--no-embeddings",
            help="Serve /v1/embeddings (an embedding context on the model, made on first use).",
            envvar="LLAMANET_EMBEDDINGS",
            show_envvar=True,
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        _option(
            "API key users must send as 'Authorization: Bearer <key>' (repeat for several).",
            "api_key",
        ),
    ] = None,
    swarm_key: Annotated[
        str | None,
        _option(
            "Shared secret of a private swarm: only peers "
            "with it may forward to or from this node.",
            "swarm_key",
        ),
    ] = None,
    rate_limit: Annotated[
        int | None,
        _option("Generation requests per minute per client (0 = unlimited).", "rate_limit"),
    ] = None,
    max_streams: Annotated[
        int | None,
        _option("Concurrent generation requests per client (0 = unlimited).", "max_streams"),
    ] = None,
    request_timeout: Annotated[
        float | None,
        _option(
            "Seconds a request may run before it is ended with an error (default 600).",
            "request_timeout",
        ),
    ] = None,
    first_byte_timeout: Annotated[
        float | None,
        _option(
            "Seconds a peer gets to start its answer before a liveness probe decides whether "
            "it is busy (wait on) or frozen (try another node); default 5.",
            "first_byte_timeout",
        ),
    ] = None,
    stall_timeout: Annotated[
        float | None,
        _option(
            "Seconds a relayed stream may stay silent (keep-alives included) before it is "
            "resumed on another node with the same model; default 10.",
            "stall_timeout",
        ),
    ] = None,
    keepalive_interval: Annotated[
        float | None,
        _option(
            "Seconds of silence in a stream (queued, long prefill) before a keep-alive "
            "comment is sent; default 2.",
            "keepalive_interval",
        ),
    ] = None,
    log_level: Annotated[str | None, _option("Log level (default info).", "log_level")] = None,
) -> None:
    """Run an inference node: OpenAI-compatible API, native API, web UI, DHT presence."""
    given = {k: v for k, v in locals().items() if v is not None}
    try:
        settings = NodeSettings(**given)
    except ValueError as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc
    if settings.model is not None and not settings.no_model and not settings.model.is_file():
        console.print(
            f"[red]error:[/red] model file {settings.model} does not exist (without --model "
            "the node serves the bundled default model, pulled if missing)"
        )
        raise typer.Exit(2)
    setup_logging(settings.log_level)
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:  # the port is taken, the address is not this machine's, ...
        console.print(
            f"[red]error:[/red] cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc} (another node there? choose another --port, or 0 for a "
            "free one)"
        )
        raise typer.Exit(1) from exc
    serve_node(settings, sock)


def _default_model(home: Path | None) -> Path:
    from llamanet.node.model_store import resolve_model

    models_dir = (home or default_home()) / "models"
    bar, update = progress_bar()
    with bar:
        return resolve_model(None, models_dir, update)


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="A node's URL to reach the swarm through (default http://127.0.0.1:8000)."
    ),
]
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        help="DHT peers host:port[,host:port] to join as a light client [env: LLAMANET_BOOTSTRAP].",
        envvar="LLAMANET_BOOTSTRAP",
    ),
]


@app.command()
def demo(
    nodes: Annotated[
        int, typer.Option("--nodes", min=1, max=16, help="How many nodes to start.")
    ] = 2,
    once: Annotated[bool, typer.Option(help="Exit after the streamed answer.")] = False,
    model: Annotated[
        Path | None, typer.Option(help="GGUF model (default: bundled SmolLM2).")
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            help="Where the demo nodes keep keys and logs (default: a new temporary folder)."
        ),
    ] = None,
    question: Annotated[str, typer.Option(help="What to ask the swarm.")] = "",
) -> None:
    """Start a local swarm on the default model, stream an answer through it, keep it running."""
    from llamanet.cli.console import DEMO_QUESTION, run_demo
    from llamanet.cli.launcher import LaunchError

    setup_logging("warning")
    out = Console()
    path = model or _default_model(None)
    try:
        code = run_demo(path, nodes, once, home, out, question or DEMO_QUESTION)
    except LaunchError as exc:
        console.print(f"[red]the demo swarm did not start:[/red] {exc}")
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


@app.command()
def chat(
    url: UrlOption = None,
    bootstrap: BootstrapOption = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: any).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 512,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
) -> None:
    """Chat with the swarm in the terminal, answers streamed as they are generated."""
    from llamanet.cli.console import client_for, interactive_chat

    setup_logging("warning")
    client = client_for(url, bootstrap, model)
    asyncio.run(interactive_chat(client, Console(), max_tokens=max_tokens, temperature=temperature))


@app.command()
def status(
    url: UrlOption = None,
    bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show the live nodes of the swarm: models, load, queue, tokens/s."""
    from llamanet.cli.console import fetch_records, records_json, swarm_table
    from llamanet.client import LlamaNetError

    setup_logging("warning")
    try:
        records = asyncio.run(fetch_records(url, bootstrap))
    except LlamaNetError as exc:
        console.print(f"[red]could not reach the swarm:[/red] {exc}")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(records_json(records))
    else:
        Console().print(swarm_table(records))


@app.command()
def monitor(
    url: UrlOption = None,
    bootstrap: BootstrapOption = None,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between updates.")] = 1.0,
) -> None:
    """The swarm table, updated live until Ctrl-C."""
    from llamanet.cli.console import monitor as run_monitor

    setup_logging("warning")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_monitor(url, bootstrap, interval, Console()))


@app.command()
def version() -> None:
    """Print the LlamaNet version."""
    typer.echo(__version__)


def main() -> None:  # pragma: no cover - `python -m llamanet`
    app(prog_name="llamanet")


if __name__ == "__main__":  # pragma: no cover
    main()
