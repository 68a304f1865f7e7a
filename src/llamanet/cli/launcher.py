"""Starting and stopping node processes on this machine (used by `llamanet demo` and the tests).

A node started with `--port 0 --dht-port 0` picks free ports and logs them; `launch_node` reads
them back from the node's log and waits until `/health` answers 200.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HTTP_RE = re.compile(r"listening on (http://[\w.\-\[\]:]+:\d+)")
DHT_RE = re.compile(r"DHT listening on udp ([\w.\-]+):(\d+)")


class LaunchError(RuntimeError):
    """A node process exited or did not become healthy in time."""


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    home: Path
    log_path: Path
    args: list[str]
    url: str = ""
    dht_port: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.dht_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get("/status").json()
        return status

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown: the node withdraws from the DHT), SIGKILL if it hangs."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)

    def wait_until(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Polls `/status` until `predicate(status)` holds."""
        deadline = time.monotonic() + timeout
        status = self.status()
        while not predicate(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"status never satisfied the condition: {status}")
            time.sleep(0.05)
            status = self.status()
        return status


def spawn_node(
    args: Sequence[str],
    home: Path,
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> NodeProcess:
    """Starts `python -m llamanet node --port 0 --dht-port 0 --home HOME ARGS` in the background."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = log_path or home / "node.log"
    cmd = [
        sys.executable,
        "-m",
        "llamanet",
        "node",
        "--port",
        "0",
        "--dht-port",
        "0",
        "--home",
        str(home),
        *args,
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return NodeProcess(proc, home, log_path, list(args))


def wait_healthy(node: NodeProcess, timeout: float = 120.0) -> NodeProcess:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive():
            raise LaunchError(f"node exited with {node.proc.returncode}:\n{node.log()}")
        text = node.log()
        http, dht = HTTP_RE.search(text), DHT_RE.search(text)
        node.url = node.url or (http.group(1) if http else "")
        node.dht_port = node.dht_port or (int(dht.group(2)) if dht else 0)
        if node.url and node.dht_port:
            try:
                if httpx.get(node.url + "/health", timeout=2).status_code == 200:
                    return node
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise LaunchError(f"node did not become healthy in {timeout:.0f}s:\n{node.log()}")


def launch_node(args: Sequence[str], home: Path, **kw: Any) -> NodeProcess:
    """Spawns a node and waits for it; a node that fails to come up is not left running."""
    node = spawn_node(args, home, **kw)
    try:
        return wait_healthy(node)
    except BaseException:
        node.kill()
        raise


def wait_for_swarm(nodes: Sequence[NodeProcess], timeout: float = 60.0) -> None:
    """Waits until every node lists every other one in `GET /nodes`."""
    want = {n.get("/info").json()["node_id"] for n in nodes}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [{r["node_id"] for r in n.get("/nodes").json()["nodes"]} for n in nodes]
        if all(want <= s for s in seen):
            return
        time.sleep(0.2)
    raise LaunchError("the nodes did not discover each other in time")
