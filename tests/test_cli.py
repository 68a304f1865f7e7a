"""The command line and the node's metrics, run for real."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamanet.node.model_store import DEFAULT_FILENAME, DEFAULT_SHA256, sha256_of

pytestmark = pytest.mark.model


def llamanet(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps help text at the terminal width
    return subprocess.run(
        [sys.executable, "-m", "llamanet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def test_help_lists_every_command() -> None:
    out = llamanet("--help").stdout
    for command in ("node", "pull", "demo", "chat", "status", "monitor"):
        assert command in out
    node_help = llamanet("node", "--help").stdout
    assert "LLAMANET_QUEUE_SIZE" in node_help and "--bootstrap" in node_help


def test_pull_fetches_verifies_and_is_idempotent(tmp_path: Path) -> None:
    first = llamanet("pull", "--home", str(tmp_path))
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "models" / DEFAULT_FILENAME
    assert path.read_bytes()[:4] == b"GGUF" and sha256_of(path) == DEFAULT_SHA256
    mtime = path.stat().st_mtime_ns
    again = llamanet("pull", "--home", str(tmp_path))
    assert again.returncode == 0 and Path(again.stdout.strip()) == path
    assert path.stat().st_mtime_ns == mtime  # verified in place, not fetched again
    assert "Downloading" not in again.stderr


def test_demo_once_streams_an_answer_from_a_two_node_swarm(model_path: Path) -> None:
    run = llamanet("demo", "--once", "--model", str(model_path), "--question", "Say hello.")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 2 nodes discovered each other" in run.stdout
    answer = run.stdout.split("swarm>", 1)[1].split("(node", 1)[0].strip()
    assert answer
    assert "OpenAI base URL" in run.stdout and "swarm stopped" in run.stdout


@pytest.mark.timeout(300)
def test_demo_stopped_by_sigterm_stops_its_nodes(model_path: Path, tmp_path: Path) -> None:
    """`kill <demo>` (or a closed terminal) ends the demo as Ctrl-C does: its nodes stop too."""
    log = tmp_path / "demo.out"
    with log.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "llamanet", "demo", "--model", str(model_path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
            text=True,
        )
        try:
            for _ in range(480):
                if "Ctrl-C stops it" in log.read_text() or demo.poll() is not None:
                    break
                time.sleep(0.5)
            out = log.read_text()
            assert "Ctrl-C stops it" in out, out
            urls = re.findall(r"node \d up at (http://\S+)", out)
            assert len(urls) == 2, out
            demo.send_signal(signal.SIGTERM)
            demo.wait(60)
        finally:
            if demo.poll() is None:
                demo.kill()
    assert "swarm stopped" in log.read_text()
    for url in urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=5)


def test_status_json_lists_both_nodes(start_node: Any) -> None:
    a = start_node("--model-id", "smol")
    b = start_node("--model-id", "smol", "--bootstrap", a.bootstrap)
    want = {a.get("/info").json()["node_id"], b.get("/info").json()["node_id"]}
    for _ in range(50):
        run = llamanet("status", "--url", a.url, "--json")
        assert run.returncode == 0, run.stderr
        if {n["node_id"] for n in json.loads(run.stdout)} == want:
            break
    else:
        raise AssertionError(f"status never listed both nodes: {run.stdout}")
    table = llamanet("status", "--bootstrap", b.bootstrap)
    assert table.returncode == 0 and a.url in table.stdout and b.url in table.stdout


def test_monitor_into_a_pipe_prints_a_table_per_update(start_node: Any) -> None:
    """Piped (not a terminal), each update is printed as it comes; Ctrl-C ends it cleanly."""
    node = start_node("--model-id", "smol")
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "llamanet", "monitor", "--url", node.url, "--interval", "0.2"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # Ctrl-C as in a terminal, even when the suite runs in the background (which starts
        # every child with SIGINT ignored, and Python then keeps it ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen, deadline = "", time.monotonic() + 60
    try:
        while seen.count("LlamaNet swarm") < 3 or node.url not in seen:
            try:
                seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"monitor printed only {seen!r}") from None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_status_reports_an_unreachable_swarm() -> None:
    run = llamanet("status", "--url", "http://127.0.0.1:9", timeout=60)
    assert run.returncode == 1 and "could not reach" in run.stderr


def test_a_node_on_a_taken_port_says_so_and_exits(tmp_path: Path) -> None:
    """A port another process listens on: one clear line and exit status 1, no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = llamanet(
            "node", "--no-model", "--port", str(port), "--home", str(tmp_path), timeout=60
        )
    assert run.returncode == 1, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_a_node_given_a_missing_model_file_says_so_and_exits(tmp_path: Path) -> None:
    run = llamanet("node", "--model", str(tmp_path / "nope.gguf"), "--port", "0", timeout=60)
    assert run.returncode == 2, run.stderr
    assert "nope.gguf does not exist" in " ".join(run.stderr.split())  # rich wraps lines
    assert "Traceback" not in run.stderr + run.stdout


def _samples(node: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = node.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_move(start_node: Any) -> None:
    node = start_node("--model-id", "smol")
    before = _samples(node)
    res = httpx.post(
        node.url + "/v1/chat/completions",
        timeout=60,
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
    )
    assert res.status_code == 200
    after = _samples(node)
    key = (
        "llamanet_http_requests_total",
        (("endpoint", "/v1/chat/completions"), ("status", "200")),
    )
    assert after[key] == before.get(key, 0) + 1
    tokens = ("llamanet_tokens_generated_total", ())
    assert after[tokens] == before[tokens] + res.json()["usage"]["completion_tokens"]
    ttft = ("llamanet_time_to_first_token_seconds_count", ())
    assert after[ttft] == before[ttft] + 1
    for gauge in ("llamanet_queue_depth", "llamanet_active_requests", "llamanet_dht_peers"):
        assert (gauge, ()) in after
