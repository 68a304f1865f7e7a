"""Helpers shared by the benchmarks: one streamed request, timed as its consumer sees it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMPT = "Here is a long story about a dragon who learns to cook.\n\nOnce upon a time,"


@dataclass
class Run:
    ttft_ms: float
    tps: float
    chunks: int


# The baselines load the model with the node's weight buffers (`llamanet.node.engine._model`):
# on a CPU with AMX, a llama.cpp build whose AMX kernels crash runs without extra buffer types
# (`_amx.py`), so there every server runs the same kernels as the node. `llama_cpp.Llama` has no
# such option: the prelude swaps the default model parameters it starts from for the node's.
_NODE_WEIGHTS = """
import llama_cpp.llama_cpp as _C
from llamanet.node.engine import extra_buffers_safe as _safe
_default = _C.llama_model_default_params
_extra = _safe({model!r})
def _params():
    params = _default()
    params.use_extra_bufts = _extra
    return params
_C.llama_model_default_params = _params
"""


def use_node_weights(model: Path) -> None:
    """In this process: `llama_cpp.Llama` loads `model` the way the node does (see above)."""
    exec(_NODE_WEIGHTS.format(model=str(model)), {})


def llama_cpp_server_command(python: str, model: Path) -> list[str]:
    """`python -m llama_cpp.server`, loading `model` the way the node does (see above)."""
    run = "import runpy; runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)"
    return [python, "-c", _NODE_WEIGHTS.format(model=str(model)) + run]


def llama_server_weight_args(model: Path) -> list[str]:
    """llama-server's flag for the node's weight buffers (see above; bench/_llama_server.py
    builds it with the same AMX fix as the node's llama.cpp)."""
    from llamanet.node.engine import extra_buffers_safe

    return [] if extra_buffers_safe(model) else ["--no-repack"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarise(start: float, times: list[float]) -> Run:
    if not times:
        return Run(float("nan"), float("nan"), 0)
    tps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return Run((times[0] - start) * 1000, tps, len(times))


# One pooled client for every run: a new httpx.Client per request costs ~20 ms (SSL context,
# connection set-up) that would be charged to the server's time to first token.
CLIENT = httpx.Client(timeout=300)


def http_run(base: str, tokens: int) -> Run:
    body = {
        "model": "bench",
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
    }
    times: list[float] = []
    start = time.perf_counter()
    with CLIENT.stream("POST", base + "/v1/completions", json=body) as res:
        res.raise_for_status()
        for line in res.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0].get("text"):
                    times.append(time.perf_counter())
    return summarise(start, times)


def start_server(
    cmd: list[str], url: str, log: Path, ready_path: str = "/v1/models", timeout: float = 120.0
) -> subprocess.Popen[bytes]:
    """Starts a server process (output to `log`) and waits until `url + ready_path` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"{cmd[:4]} did not start:\n{log.read_text(errors='replace')}")
